"""An ``--out`` never destroys what the user needs: it replaces only an artifact of its own kind that
is not an input of the same command, never writes inside another artifact, and a symbolic link
keeps pointing at the rebuilt artifact."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from simformer_cli.artifacts.model import ModelManifest
from simformer_cli.artifacts.store import open_artifact

from refusals import Refusals, copy_artifact, refusals, shared  # noqa: F401 - fixtures

TRAIN = ["--iters", "1", "--batch-size", "2", "--device", "cpu"]


def _copies(shared: dict, tmp_path: Path, *names: str) -> dict[str, Path]:  # noqa: ANN001
    """Private copies of the shared artifacts, so a refusal that failed could not hurt other tests."""
    return {name: copy_artifact(shared[name], tmp_path / Path(shared[name]).name) for name in names}


@pytest.mark.parametrize(("case", "what", "command"), [
    ("output-is-the-input-train", "`train --out` names its own `--split`",
     lambda a: ["train", "--split", a["split"], "--out", a["split"], *TRAIN]),
    ("output-is-the-input-infer-model", "`infer --out` names its own `--model`",
     lambda a: ["infer", "--model", a["model"], "--split", a["split"], "--out", a["model"], "--device", "cpu"]),
    ("output-is-the-input-infer-split", "`infer --out` names its own `--split`",
     lambda a: ["infer", "--model", a["model"], "--split", a["split"], "--out", a["split"], "--device", "cpu"]),
    ("output-is-the-input-eval", "`eval --out` names its own `--predictions`",
     lambda a: ["eval", "--predictions", a["predictions"], "--split", a["split"], "--out", a["predictions"]]),
    ("output-is-the-input-retrain-init", "`retrain --out` names its own `--init-from`",
     lambda a: ["retrain", "--split", a["split"], "--pseudolabels", a["pseudo"], "--init-from", a["model"],
                "--out", a["model"], *TRAIN]),
    ("output-is-the-input-retrain-pseudolabels", "`retrain --out` names its own `--pseudolabels`",
     lambda a: ["retrain", "--split", a["split"], "--pseudolabels", a["pseudo"], "--out", a["pseudo"], *TRAIN]),
    ("output-is-the-input-pseudolabel", "`pseudolabel --out` names its own `--model`",
     lambda a: ["pseudolabel", "--model", a["model"], "--split", a["split"], "--out", a["model"], "--device", "cpu"]),
])
def test_an_output_never_replaces_an_input_of_the_same_command(refusals: Refusals, shared, tmp_path: Path,  # noqa: ANN001
                                                               case: str, what: str, command) -> None:  # noqa: ANN001
    artifacts = _copies(shared, tmp_path, "split", "model", "predictions", "pseudo")
    refusals.check(case, what, command(artifacts), "input; writing the output there would destroy it")


@pytest.mark.parametrize(("case", "what", "command"), [
    ("output-is-another-kind-split", "`split --out` names a model artifact",
     lambda a, data: ["split", "--dataset", "folder", "--root", data, "--out", a["model"], "--workers", "1"]),
    ("output-is-another-kind-train", "`train --out` names a predictions artifact",
     lambda a, data: ["train", "--split", a["split"], "--out", a["predictions"], *TRAIN]),
    ("output-is-another-kind-eval", "`eval --out` names a split artifact (not its own)",
     lambda a, data: ["eval", "--predictions", a["predictions"], "--split", a["split"], "--out", a["other"]]),
])
def test_an_output_replaces_only_an_artifact_of_its_own_kind(refusals: Refusals, shared, tmp_path: Path,  # noqa: ANN001
                                                             case: str, what: str, command) -> None:  # noqa: ANN001
    artifacts = _copies(shared, tmp_path, "split", "model", "predictions", "other")
    refusals.check(case, what, command(artifacts, shared["data"]), "replaces only one of that kind")


def test_an_output_is_never_written_inside_an_artifact(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    artifacts = _copies(shared, tmp_path, "split", "predictions")
    refusals.check("output-inside-an-artifact", "`eval --out` inside the split artifact",
                   ["eval", "--predictions", artifacts["predictions"], "--split", artifacts["split"],
                    "--out", artifacts["split"] / "metrics.zarr"], "is inside the artifact")


def test_an_output_through_a_symbolic_link_replaces_its_target_and_keeps_the_link(cli, shared, tmp_path: Path) -> None:  # noqa: ANN001
    target = tmp_path / "models" / "model.zarr"
    target.parent.mkdir()
    copy_artifact(shared["model"], target)
    link = tmp_path / "latest.zarr"
    os.symlink(target, link)
    result = cli("train", "--split", shared["split"], "--out", link, "--seed", "3", *TRAIN)
    assert result.code == 0, result.err
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert open_artifact(link, ModelManifest)[0].params.settings.seed == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.zarr", "models"]
    assert sorted(p.name for p in target.parent.iterdir()) == [".model.zarr.lock", "model.zarr"]
