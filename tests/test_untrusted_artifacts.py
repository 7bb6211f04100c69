"""Artifacts from somewhere else: a crafted artifact is refused or harmless.

- Nothing is ever unpickled: pickle payloads in the places a weights file, a checkpoint, backbone
  weights or zarr metadata would be never run (each payload would create a marker file).
- Paths recorded in manifests are provenance only: a manifest pointing at /etc or at a trap folder
  does not make any stage open anything there (an audit hook in the stage's process watches every
  file opened and folder listed).
- Inputs are only read: every file of the input artifacts keeps its bytes and mtime across train,
  infer, eval, pseudolabel, retrain, viz and export, and, where a private mount namespace can be
  made, the same stages run with their inputs on a read-only mount.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from simformer_cli.artifacts.digest import manifest_digest

from conftest import make_folder_dataset, OnTrainingStep

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this creates the marker file: the proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture(scope="module")
def shared(tmp_path_factory):  # noqa: ANN001, ANN201
    from simformer_cli.pipeline.infer import run_infer
    from simformer_cli.pipeline.pseudolabel import run_pseudolabel
    from simformer_cli.pipeline.split import run_split
    from simformer_cli.pipeline.train import run_train

    base = tmp_path_factory.mktemp("untrusted")
    data = make_folder_dataset(base / "data")
    split = run_split(dataset="folder", root=data, out=base / "split.zarr", novel_classes="car,person", workers=1).path
    model = run_train(split=split, out=base / "model.zarr", iters=1, batch_size=2, device="cpu").path
    predictions = run_infer(model=model, split=split, out=base / "pred.zarr", device="cpu").path
    pseudo = run_pseudolabel(model=model, split=split, out=base / "pseudo.zarr", device="cpu").path
    return dict(base=base, data=data, split=split, model=model, predictions=predictions, pseudo=pseudo)


def rewrite_manifest(path: Path, change) -> None:  # noqa: ANN001
    """Edit a manifest and give it a valid digest, as a forger would."""
    document = json.loads((path / "manifest.json").read_text())
    change(document["manifest"])
    document["digest"] = manifest_digest(document["manifest"])
    (path / "manifest.json").write_text(json.dumps(document))


def sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- no unpickling, anywhere


def test_weights_replaced_by_a_pickle_are_refused_unread(cli, shared, tmp_path: Path) -> None:  # noqa: ANN001
    marker = tmp_path / "marker"
    model = tmp_path / "model.zarr"
    shutil.copytree(shared["model"], model)
    (model / "weights.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    result = cli("infer", "--model", model, "--split", shared["split"], "--out", tmp_path / "p.zarr", "--device", "cpu")
    assert result.code == 2 and "does not match the manifest's digest" in result.err
    assert not marker.exists()
    assert not (tmp_path / "p.zarr").exists()


@pytest.mark.parametrize("format", ["pickle", "torch.save"])
def test_pickle_weights_with_a_forged_digest_are_never_unpickled(cli, shared, tmp_path: Path, format: str) -> None:  # noqa: ANN001
    """The forger also fixes the manifest's sha256 and digest: the file is still only parsed as safetensors."""
    import torch

    marker = tmp_path / "marker"
    model = tmp_path / "model.zarr"
    shutil.copytree(shared["model"], model)
    weights = model / "weights.safetensors"
    if format == "pickle":
        weights.write_bytes(pickle.dumps(Payload(marker)))
    else:
        torch.save({"backbone.weight": Payload(marker)}, weights)
    rewrite_manifest(model, lambda body: body.update(weights_sha256=sha256_file(weights)))
    result = cli("infer", "--model", model, "--split", shared["split"], "--out", tmp_path / "p.zarr", "--device", "cpu")
    assert result.code != 0 and "Traceback" not in result.err
    assert not marker.exists()
    assert not (tmp_path / "p.zarr").exists()


def test_unparsable_weights_with_a_forged_digest_are_a_clean_refusal(cli, shared, tmp_path: Path) -> None:  # noqa: ANN001
    model = tmp_path / "model.zarr"
    shutil.copytree(shared["model"], model)
    weights = model / "weights.safetensors"
    weights.write_bytes(pickle.dumps(Payload(tmp_path / "marker")))
    rewrite_manifest(model, lambda body: body.update(weights_sha256=sha256_file(weights)))
    result = cli("infer", "--model", model, "--split", shared["split"], "--out", tmp_path / "p.zarr", "--device", "cpu")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1


def test_weights_that_are_a_link_outside_the_artifact_are_refused(cli, shared, tmp_path: Path) -> None:  # noqa: ANN001
    model = tmp_path / "model.zarr"
    shutil.copytree(shared["model"], model)
    (model / "weights.safetensors").unlink()
    (model / "weights.safetensors").symlink_to("/etc/hostname" if Path("/etc/hostname").exists() else "/etc/passwd")
    result = cli("infer", "--model", model, "--split", shared["split"], "--out", tmp_path / "p.zarr", "--device", "cpu")
    assert result.code == 2 and "does not match" in result.err


def test_a_pickle_checkpoint_is_never_unpickled_on_resume(cli, shared, tmp_path: Path) -> None:  # noqa: ANN001
    from simformer_cli.pipeline.train import run_train

    out = tmp_path / "m.zarr"

    class Stop(Exception):
        pass

    def stop(done: int) -> None:
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        run_train(split=shared["split"], out=out, iters=3, batch_size=2, checkpoint_every=1, device="cpu", reporter=OnTrainingStep(stop))
    checkpoints = sorted((tmp_path / ".m.zarr.partial" / "checkpoints").glob("step-*"))
    assert checkpoints
    marker = tmp_path / "marker"
    (checkpoints[-1] / "tensors.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    result = cli("train", "--split", shared["split"], "--out", out, "--iters", "3", "--batch-size", "2",
                 "--checkpoint-every", "1", "--device", "cpu", "--resume")
    assert result.code != 0 and "Traceback" not in result.err
    assert not marker.exists()
    assert not out.exists()


def test_pickle_backbone_weights_are_refused_unread_and_nothing_is_written(cli, shared, tmp_path: Path) -> None:  # noqa: ANN001
    import torch

    marker = tmp_path / "marker"
    for name, write in (("plain.pth", lambda p: p.write_bytes(pickle.dumps(Payload(marker)))),
                        ("torch.pth", lambda p: torch.save({"conv1.weight": Payload(marker)}, p))):
        weights = tmp_path / name
        write(weights)
        result = cli("train", "--split", shared["split"], "--out", tmp_path / "out" / "m.zarr", "--iters", "1",
                     "--batch-size", "2", "--device", "cpu", "--backbone-weights", weights)
        assert result.code == 2, result.err
        assert len(result.err.strip().splitlines()) == 1 and name in result.err
        assert not marker.exists()
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_good_backbone_weights_still_train(cli, shared, tmp_path: Path) -> None:  # noqa: ANN001
    """The early check of --backbone-weights accepts what training accepts."""
    import torch

    from simformer_cli.artifacts.split import SplitArtifact
    from simformer_cli.model import build_model
    from simformer_cli.training.resolve import resolve_settings

    settings = resolve_settings(SplitArtifact(shared["split"]), preset="tiny", method="simformer", iters=1,
                                batch_size=2, seed=None, lr=None)
    weights = tmp_path / "backbone.pth"
    torch.save(build_model(settings.model).backbone.state_dict(), weights)
    result = cli("train", "--split", shared["split"], "--out", tmp_path / "m.zarr", "--iters", "1", "--batch-size", "2",
                 "--device", "cpu", "--backbone-weights", weights)
    assert result.code == 0, result.err


def test_zarr_v2_metadata_with_a_pickle_codec_is_refused_unread(cli, shared, tmp_path: Path) -> None:  # noqa: ANN001
    """A split whose store is rewritten as zarr v2 with a pickle filter: simformer reads zarr v3 only."""
    marker = tmp_path / "marker"
    split = tmp_path / "split.zarr"
    shutil.copytree(shared["split"], split)
    (split / "zarr.json").unlink()
    (split / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    for sub in ("train", "val"):
        (split / sub / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
        (split / sub / "zarr.json").unlink()
        array = split / sub / "sizes"
        shape = json.loads((array / "zarr.json").read_text())["shape"]
        shutil.rmtree(array)
        array.mkdir()
        (array / ".zarray").write_text(json.dumps({
            "zarr_format": 2, "shape": shape, "chunks": shape, "dtype": "|O", "compressor": None, "fill_value": 0,
            "order": "C", "filters": [{"id": "pickle"}], "dimension_separator": "."}))
        (array / "0.0").write_bytes(pickle.dumps(Payload(marker)))
    for args in (["train", "--split", split, "--out", tmp_path / "m.zarr", "--device", "cpu"],
                 ["infer", "--model", shared["model"], "--split", split, "--out", tmp_path / "p.zarr", "--device", "cpu"]):
        result = cli(*args)
        assert result.code == 2 and "cannot be opened" in result.err, result.err
        assert not marker.exists()


# ---------------------------------------------------------------- recorded paths are never followed


AUDITED = """
import os, sys
TRAPS = tuple(sys.argv[1].split(os.pathsep))
RECORD = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
EVENTS = {"open", "os.listdir", "os.scandir", "os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree",
          "os.chmod", "os.symlink", "os.truncate", "shutil.copyfile", "os.walk"}

def hook(event, args):
    if event in EVENTS and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(os.fspath(args[0]))
        # "/etc" only as itself: below it, the trap entries are what following it as an artifact would touch
        if path and any(path == trap or (trap != "/etc" and path.startswith(trap + "/")) for trap in TRAPS):
            os.write(RECORD, f"{event} {path}\\n".encode())

sys.addaudithook(hook)
from simformer_cli.cli import run
codes = [run(command.split("\\x1f")) for command in sys.argv[3:]]
print(codes)
"""


def test_paths_in_manifests_are_never_opened(shared, tmp_path: Path) -> None:  # noqa: ANN001
    trap = tmp_path / "trap"
    trap.mkdir()
    for name in ("split", "model", "predictions", "pseudo"):  # genuine copies: following a path would "work"
        shutil.copytree(shared[name], trap / shared[name].name)
    etc = ["/etc/manifest.json", "/etc/zarr.json", "/etc/weights.safetensors", "/etc/train", "/etc/val",
           "/etc/labels", "/etc/sizes"]

    def forge(name: str, redirect: dict[str, str]) -> Path:
        copy = tmp_path / "inputs" / shared[name].name
        shutil.copytree(shared[name], copy)

        def change(body: dict) -> None:
            for key, target in redirect.items():
                body["inputs"]["artifacts"][key]["path"] = target
            if body.get("provenance"):
                body["provenance"]["command"] = ["simformer", "--out", "/etc"]
                if "dataset_root" in body["provenance"]:
                    body["provenance"]["dataset_root"] = "/etc"

        rewrite_manifest(copy, change)
        return copy

    split = forge("split", {})
    model = forge("model", {"split": "/etc"})
    predictions = forge("predictions", {"model": str(trap / "model.zarr"), "split": "/etc"})
    pseudo = forge("pseudo", {"model": "/etc", "split": str(trap / "split.zarr")})
    out = tmp_path / "out"
    commands = [
        ["train", "--split", split, "--out", out / "m.zarr", "--iters", "1", "--batch-size", "2", "--device", "cpu"],
        ["infer", "--model", model, "--split", split, "--out", out / "p.zarr", "--device", "cpu"],
        ["pseudolabel", "--model", model, "--split", split, "--out", out / "pl.zarr", "--device", "cpu"],
        ["eval", "--predictions", predictions, "--split", split, "--out", out / "e.zarr"],
        ["retrain", "--split", split, "--pseudolabels", pseudo, "--out", out / "rt.zarr", "--iters", "1",
         "--batch-size", "2", "--device", "cpu"],
        ["viz", "--predictions", predictions, "--split", split, "--out", out / "viz", "--limit", "1"],
        ["export", "--predictions", predictions, "--format", "coco", "--out", out / "r.json"],
    ]
    record = tmp_path / "opened.txt"
    record.touch()
    traps = os.pathsep.join([str(trap), "/etc", *etc])
    argv = ["\x1f".join(map(str, command)) for command in commands]
    done = subprocess.run([sys.executable, "-c", AUDITED, traps, str(record), *argv],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [0] * len(commands), done.stderr[-3000:]
    assert record.read_text() == ""


# ---------------------------------------------------------------- inputs are only read


def file_states(root: Path) -> dict[str, tuple]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            if p.is_file() else ("folder",) for p in sorted(root.rglob("*"))}


def test_stages_leave_their_inputs_untouched(cli, shared, tmp_path: Path) -> None:  # noqa: ANN001
    inputs = tmp_path / "inputs"
    for name in ("data", "split", "model", "predictions", "pseudo"):
        shutil.copytree(shared[name], inputs / shared[name].name)
    split, model = inputs / shared["split"].name, inputs / shared["model"].name
    predictions, pseudo = inputs / shared["predictions"].name, inputs / shared["pseudo"].name
    before = file_states(inputs)
    out = tmp_path / "out"
    for args in (
        ["train", "--split", split, "--out", out / "m.zarr", "--iters", "1", "--batch-size", "2", "--device", "cpu"],
        ["infer", "--model", model, "--split", split, "--out", out / "p.zarr", "--device", "cpu", "--save-scores"],
        ["infer", "--model", model, "--images", inputs / "data" / "images" / "val", "--out", out / "pi.zarr",
         "--device", "cpu"],
        ["pseudolabel", "--model", model, "--split", split, "--out", out / "pl.zarr", "--device", "cpu"],
        ["eval", "--predictions", predictions, "--split", split, "--out", out / "e.zarr"],
        ["retrain", "--split", split, "--pseudolabels", pseudo, "--out", out / "rt.zarr", "--iters", "1",
         "--batch-size", "2", "--device", "cpu"],
        ["viz", "--predictions", predictions, "--split", split, "--out", out / "viz", "--limit", "2"],
        ["export", "--predictions", predictions, "--format", "png", "--out", out / "png"],
        ["split", "--dataset", "folder", "--root", inputs / "data", "--out", out / "s.zarr", "--workers", "1"],
    ):
        result = cli(*args)
        assert result.code == 0, (args[0], result.err)
    assert file_states(inputs) == before
    assert sorted(p.name for p in inputs.iterdir()) == sorted(["data", split.name, model.name, predictions.name,
                                                              pseudo.name])


def _read_only_mounts_work() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind /tmp /tmp && mount -o remount,ro,bind /tmp"],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(not _read_only_mounts_work(), reason="needs a private mount namespace (root, unshare -m)")
def test_stages_run_with_their_inputs_on_a_read_only_mount(shared, tmp_path: Path) -> None:  # noqa: ANN001
    """Not a write is even tried: the inputs sit on a read-only bind mount (root cannot write there either)."""
    inputs = tmp_path / "inputs"
    for name in ("data", "split", "model", "predictions", "pseudo"):
        shutil.copytree(shared[name], inputs / shared[name].name)
    out = tmp_path / "out"
    out.mkdir()
    cli = f"'{sys.executable}' -m simformer_cli"
    s, m, p, pl = (inputs / shared[name].name for name in ("split", "model", "predictions", "pseudo"))
    script = "; ".join([
        f"set -e; mount --bind '{inputs}' '{inputs}'; mount -o remount,ro,bind '{inputs}'",
        f"touch '{inputs}/probe' 2>/dev/null && exit 99 || true",  # the mount is really read-only
        f"{cli} train --split '{s}' --out '{out}/m.zarr' --iters 1 --batch-size 2 --device cpu",
        f"{cli} infer --model '{m}' --split '{s}' --out '{out}/p.zarr' --device cpu",
        f"{cli} pseudolabel --model '{m}' --split '{s}' --out '{out}/pl.zarr' --device cpu",
        f"{cli} eval --predictions '{p}' --split '{s}' --out '{out}/e.zarr'",
        f"{cli} retrain --split '{s}' --pseudolabels '{pl}' --out '{out}/rt.zarr' --iters 1 --batch-size 2 --device cpu",
    ])
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("m", "p", "pl", "e", "rt"):
        assert (out / f"{name}.zarr" / "manifest.json").is_file(), name
