"""No back door to the novel labels: which labels a training run reads is decided once, from its
resolved settings, and recorded in the model manifest. Every route a user could take (options,
``--set``, resuming an oracle checkpoint, ``retrain --init-from`` an oracle model, pseudo labels
of an oracle model) either is refused or leaves weak-shot weights unchanged when the novel pixels
of the full train labels are rewritten."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import OnTrainingStep, relist_files
from safetensors.numpy import load_file

from simformer_cli.artifacts.model import ModelManifest
from simformer_cli.artifacts.store import read_manifest
from simformer_cli.artifacts.split import AUDIT_LABELS, SplitArtifact
from simformer_cli.pipeline.train import run_train
from simformer_cli.training.labels import CROP_LABELS, FULL_LABELS, IMAGE_LABELS, PSEUDO_LABELS, WEAK_LABELS

SMALL = ["--iters", "2", "--batch-size", "4", "--device", "cpu"]


class Interrupt(Exception):
    pass


def weights(path: Path) -> dict[str, np.ndarray]:
    return load_file(str(path / "weights.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[key], wb[key]) for key in wa)


def sources(model: Path) -> list[str]:
    return read_manifest(model, ModelManifest)[0].label_sources


def rewrite_novel_pixels(split: Path) -> None:
    """Give every novel pixel of the full train labels another novel class (weak labels untouched)."""
    novel = np.asarray(SplitArtifact(split).manifest.novel_classes)
    audit = zarr.open_group(str(split), mode="r+")[AUDIT_LABELS]
    labels = audit[...]
    is_novel = np.isin(labels, novel)
    assert is_novel.any()
    labels[is_novel] = novel[(np.searchsorted(novel, labels[is_novel]) + 1) % len(novel)]
    audit[...] = labels
    relist_files(split)  # the manifest lists the rewritten files, as if split had written them


def refused(result, *fragments: str) -> bool:  # noqa: ANN001
    lines = result.err.strip().splitlines()
    return (result.code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
            and all(fragment in lines[0] for fragment in fragments))


@pytest.fixture
def split(synthetic_split: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synthetic_split, tmp_path / "split.zarr"))


def test_every_route_to_the_full_labels_is_refused_or_changes_nothing(cli, split: Path, tmp_path: Path) -> None:
    weak = tmp_path / "weak.zarr"
    assert cli("train", "--split", split, "--out", weak, *SMALL).code == 0
    assert sources(weak) == [WEAK_LABELS, IMAGE_LABELS]

    # --set cannot change the method (nor the preset) behind --method's back, in either direction.
    for extra in (["--method", "oracle", "--set", "method=simformer"], ["--set", "method=oracle"],
                  ["--set", "method=supervised"], ["--set", "preset=paper"]):
        result = cli("train", "--split", split, "--out", tmp_path / "x.zarr", *SMALL, *extra)
        assert refused(result, "--set"), (extra, result.err)
    result = cli("retrain", "--split", split, "--pseudolabels", tmp_path / "p.zarr", *SMALL, "--set", "method=oracle")
    assert result.code == 2

    # An oracle model records that it read the full labels, and nothing weak-shot can start from it.
    oracle = tmp_path / "oracle.zarr"
    assert cli("train", "--split", split, "--out", oracle, "--method", "oracle", *SMALL).code == 0
    assert sources(oracle) == [FULL_LABELS]
    result = cli("pseudolabel", "--model", oracle, "--split", split, "--out", tmp_path / "po.zarr", "--device", "cpu")
    assert refused(result, "--model", "oracle")
    pseudo = tmp_path / "pseudo.zarr"
    assert cli("pseudolabel", "--model", weak, "--split", split, "--out", pseudo, "--device", "cpu").code == 0
    result = cli("retrain", "--split", split, "--pseudolabels", pseudo, "--init-from", oracle,
                 "--out", tmp_path / "r.zarr", *SMALL)
    assert refused(result, "--init-from", "oracle")

    # An interrupted oracle run's checkpoint is not resumed by a weak-shot run of the same output.
    resumed = tmp_path / "resumed.zarr"

    def stop(done: int) -> None:
        if done == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_train(split=split, out=resumed, method="oracle", iters=2, batch_size=4, device="cpu",
                  checkpoint_every=1, reporter=OnTrainingStep(stop))
    assert refused(cli("train", "--split", split, "--out", resumed, *SMALL, "--checkpoint-every", "1", "--resume"),
                   "other inputs or settings")
    assert cli("train", "--split", split, "--out", resumed, *SMALL, "--checkpoint-every", "1").code == 0
    assert same_weights(weak, resumed)

    retrained = tmp_path / "retrained.zarr"
    assert cli("retrain", "--split", split, "--pseudolabels", pseudo, "--init-from", weak, "--out", retrained,
               *SMALL).code == 0
    assert sources(retrained) == [PSEUDO_LABELS]

    # With the novel pixels of the full labels rewritten, every weak-shot product is the same.
    rewrite_novel_pixels(split)
    weak_again, pseudo_again, retrained_again = (tmp_path / "weak2.zarr", tmp_path / "pseudo2.zarr",
                                                 tmp_path / "retrained2.zarr")
    assert cli("train", "--split", split, "--out", weak_again, *SMALL).code == 0
    assert same_weights(weak, weak_again)
    assert cli("pseudolabel", "--model", weak_again, "--split", split, "--out", pseudo_again, "--device", "cpu").code == 0
    first, second = (np.asarray(zarr.open_group(str(p), mode="r")["labels"][...]) for p in (pseudo, pseudo_again))
    assert np.array_equal(first, second)
    assert cli("retrain", "--split", split, "--pseudolabels", pseudo_again, "--init-from", weak_again,
               "--out", retrained_again, *SMALL).code == 0
    assert same_weights(retrained, retrained_again)
    # ... while the oracle, which does read them, changes.
    oracle_again = tmp_path / "oracle2.zarr"
    assert cli("train", "--split", split, "--out", oracle_again, "--method", "oracle", *SMALL).code == 0
    assert not same_weights(oracle, oracle_again)


def test_crop_level_labels_are_recorded_as_read(cli, split: Path, tmp_path: Path) -> None:
    out = tmp_path / "crop.zarr"
    assert cli("train", "--split", split, "--out", out, *SMALL, "--set", "image_labels=crop").code == 0
    assert sources(out) == [WEAK_LABELS, IMAGE_LABELS, CROP_LABELS]
