"""Stored data that is missing, damaged, swapped, forged or rebuilt under a reader is never used
silently: each case is one line on stderr, exit 2, nothing written (the bad-input catalogue's
contract, ``refusals.py``), and its message is in ``docs/bad_inputs.md``.

How each is made: a shard file deleted, cut short, or with one bit flipped in its data or its index;
a shard file from another split; another split's manifest.json (digest valid); model weights
rewritten (NaN, int64) with the manifest's sha256, file list and digest made to agree, as a forger
would; and a split rebuilt by a read hook in the middle of ``infer`` (no sleeps, no timing).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_folder_dataset, OnTrainingStep
from refusals import Refusals, copy_artifact, edit_manifest, refusals, shared, split_args  # noqa: F401 - fixtures


def train_args(split: Path, out: Path) -> list:
    return ["train", "--split", split, "--out", out, "--iters", "1", "--batch-size", "2", "--device", "cpu"]


def shard_file(array: Path) -> Path:
    """The one chunk (shard) file of an array of the small shared artifacts."""
    files = sorted(path for path in (array / "c").rglob("*") if path.is_file())
    assert len(files) == 1, files
    return files[0]


def flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- files missing, cut short, changed or foreign


def test_deleted_train_labels_shard(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    split = copy_artifact(shared["split"], tmp_path / "split.zarr")
    shard_file(split / "train" / "labels").unlink()  # read as fill value, training would see all-ignore labels
    refusals.check("artifact-chunk-missing-train-labels", "a split whose `train/labels` shard file was deleted",
                   train_args(split, tmp_path / "m.zarr"), "'train/labels'", "c/0/0/0 is missing", "simformer split")


def test_deleted_val_images_shard(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    split = copy_artifact(shared["split"], tmp_path / "split.zarr")
    shard_file(split / "val" / "images").unlink()  # read as fill value, infer would segment black images
    refusals.check("artifact-chunk-missing-val-images", "a split whose `val/images` shard file was deleted",
                   ["infer", "--model", shared["model"], "--split", split, "--out", tmp_path / "p.zarr", "--device", "cpu"],
                   "'val/images'", "is missing")


def test_truncated_shard(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    split = copy_artifact(shared["split"], tmp_path / "split.zarr")
    path = shard_file(split / "train" / "labels")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    refusals.check("artifact-shard-truncated", "a split whose `train/labels` shard file was cut short",
                   train_args(split, tmp_path / "m.zarr"), "'train/labels'", "does not match the manifest")


def test_shard_from_another_split(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    split = copy_artifact(shared["split"], tmp_path / "split.zarr")
    mine, theirs = shard_file(split / "train" / "labels"), shard_file(shared["other"] / "train" / "labels")
    assert mine.read_bytes() != theirs.read_bytes()
    shutil.copyfile(theirs, mine)
    refusals.check("artifact-shard-foreign", "a split whose `train/labels` shard file was copied from another split",
                   train_args(split, tmp_path / "m.zarr"), "'train/labels'", "does not match the manifest")


@pytest.mark.parametrize(("case", "where", "what"), [
    ("artifact-shard-bit-flip", "data", "one bit flipped in the compressed data of a split's `val/labels` shard"),
    ("artifact-shard-index-bit-flip", "index", "one bit flipped in the shard index of a split's `val/labels` shard"),
])
def test_bit_flip_in_a_shard(refusals: Refusals, shared, tmp_path: Path, case: str, where: str, what: str) -> None:  # noqa: ANN001
    """Same size, so only the checksums can tell: every chunk's crc32c (and the index's) is checked on read."""
    split = copy_artifact(shared["split"], tmp_path / "split.zarr")
    path = shard_file(split / "val" / "labels")
    flip_bit(path, 12 if where == "data" else path.stat().st_size - 10)
    refusals.check(case, what,
                   ["eval", "--predictions", shared["predictions"], "--split", split, "--out", tmp_path / "m.zarr"],
                   "'val/labels'", "c/0/0/0 fails its checksum", "simformer split")


def test_bit_flip_in_an_unsharded_chunk_of_predictions(cli, shared, tmp_path: Path) -> None:  # noqa: ANN001
    predictions = copy_artifact(shared["predictions"], tmp_path / "pred.zarr")
    flip_bit(shard_file(predictions / "sizes"), 3)
    result = cli("eval", "--predictions", predictions, "--split", shared["split"], "--out", tmp_path / "m.zarr")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert "array 'sizes', file c/0/0 fails its checksum" in result.err and "simformer infer" in result.err


# ---------------------------------------------------------------- a manifest that belongs to other data


def test_manifest_swapped_between_two_splits(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    split = copy_artifact(shared["split"], tmp_path / "split.zarr")
    shutil.copyfile(shared["other"] / "manifest.json", split / "manifest.json")  # same shapes, a valid digest
    refusals.check("manifest-swapped", "another split's `manifest.json` (same dataset, same shapes, digest valid) "
                   "copied into a split", train_args(split, tmp_path / "m.zarr"), "belongs to other data")


def test_manifest_without_a_file_list(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    split = copy_artifact(shared["split"], tmp_path / "split.zarr")
    edit_manifest(split, lambda body: body.pop("files"), keep_digest_valid=True)  # as an older simformer wrote it
    refusals.check("manifest-no-file-list", "a manifest without the list of stored files (an older simformer's; "
                   "digest valid)", train_args(split, tmp_path / "m.zarr"), "lists no stored files")


# ---------------------------------------------------------------- forged weights


def forge_weights(model: Path, change: Callable) -> None:  # noqa: ANN001
    """Rewrite a model's weights, then make its manifest agree (sha256, file size, digest)."""
    from safetensors.torch import load_file, save_file

    weights = model / "weights.safetensors"
    save_file({name: change(tensor) for name, tensor in load_file(str(weights)).items()}, str(weights))
    sha256 = "sha256:" + hashlib.sha256(weights.read_bytes()).hexdigest()

    def agree(body: dict) -> None:
        body["weights_sha256"] = sha256
        body["files"]["weights.safetensors"] = weights.stat().st_size

    edit_manifest(model, agree, keep_digest_valid=True)


def nan_weights(tensor):  # noqa: ANN001, ANN201
    return tensor.clone().fill_(float("nan")) if tensor.is_floating_point() else tensor


def int64_weights(tensor):  # noqa: ANN001, ANN201
    import torch

    return tensor.to(torch.int64)


def test_weights_full_of_nan(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    model = copy_artifact(shared["model"], tmp_path / "model.zarr")
    forge_weights(model, nan_weights)
    refusals.check("model-weights-nan", "weights full of NaN, the manifest's sha256 and file list made to agree",
                   ["infer", "--model", model, "--split", shared["split"], "--out", tmp_path / "p.zarr", "--device", "cpu"],
                   "weights.safetensors holds NaN", "simformer train")


def test_weights_stored_as_int64(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    model = copy_artifact(shared["model"], tmp_path / "model.zarr")
    forge_weights(model, int64_weights)
    refusals.check("model-weights-int64", "weights stored as int64, the manifest's sha256 and file list made to agree",
                   ["pseudolabel", "--model", model, "--split", shared["split"], "--out", tmp_path / "pl.zarr",
                    "--device", "cpu"], "as int64, the network needs float32")


def test_init_from_weights_full_of_nan(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    model = copy_artifact(shared["model"], tmp_path / "model.zarr")
    forge_weights(model, nan_weights)
    refusals.check("model-weights-nan-init-from", "`retrain --init-from` a model whose weights are full of NaN "
                   "(sha256 and file list made to agree)",
                   ["retrain", "--split", shared["split"], "--pseudolabels", shared["pseudo"], "--init-from", model,
                    "--out", tmp_path / "rt.zarr", "--iters", "1", "--batch-size", "2", "--device", "cpu"],
                   "holds NaN")


def test_a_checkpoint_with_nan_weights_is_not_resumed(cli, shared, tmp_path: Path) -> None:  # noqa: ANN001
    from safetensors.torch import load_file, save_file

    from simformer_cli.pipeline.train import run_train

    class Stop(Exception):
        pass

    def stop(done: int) -> None:
        if done == 1:
            raise Stop

    out = tmp_path / "m.zarr"
    with pytest.raises(Stop):
        run_train(split=shared["split"], out=out, iters=3, batch_size=2, checkpoint_every=1, device="cpu", reporter=OnTrainingStep(stop))
    tensors = sorted((tmp_path / ".m.zarr.partial" / "checkpoints").glob("step-*/tensors.safetensors"))[-1]
    state = load_file(str(tensors))
    save_file({name: nan_weights(t) if name.startswith("module.") else t for name, t in state.items()}, str(tensors))
    result = cli("train", "--split", shared["split"], "--out", out, "--iters", "3", "--batch-size", "2",
                 "--checkpoint-every", "1", "--device", "cpu", "--resume")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert "checkpoint is damaged (it holds NaN" in result.err and "without --resume" in result.err
    assert not out.exists()


# ---------------------------------------------------------------- an input rebuilt while a stage reads it


@pytest.mark.parametrize(("case", "after", "what"), [
    ("input-rebuilt-while-reading", 0, "the split is rebuilt (other novel classes) while `infer` reads its images"),
    ("input-rebuilt-before-publishing", 1, "the split is rebuilt after `infer` read its last image, before it "
                                           "publishes the predictions"),
])
def test_input_rebuilt_while_a_stage_reads_it(cli, shared, tmp_path: Path, monkeypatch, case: str, after: int,
                                             what: str) -> None:  # noqa: ANN001
    """A read hook rebuilds the split right after ``infer`` read image ``after``: the next read of the
    split (or, after the last image, the commit) finds that its manifest is another one, and nothing
    mixing the two splits is published (the resumable staging folder is dropped too)."""
    from simformer_cli.artifacts.split import SplitArtifact
    from simformer_cli.pipeline.split import run_split

    split = copy_artifact(shared["split"], tmp_path / "inputs" / "split.zarr")  # the model was trained on its twin
    out = tmp_path / "out"
    out.mkdir()
    real = SplitArtifact.image
    rebuilt = []

    def image(self, subset: str, index: int):  # noqa: ANN001, ANN202
        read = real(self, subset, index)
        if index == after and not rebuilt:
            rebuilt.append(run_split(dataset="folder", root=shared["data"], out=split, novel_classes="car", workers=1))
        return read

    monkeypatch.setattr(SplitArtifact, "image", image)
    checked = Refusals(cli, [shared["base"], out], {str(shared["base"]): "DATA", str(tmp_path): "TMP"})
    checked.check(case, what, ["infer", "--model", shared["model"], "--split", split, "--out", out / "p.zarr",
                               "--device", "cpu"], "was rebuilt while this stage read it")
    assert rebuilt and not rebuilt[0].skipped


# ---------------------------------------------------------------- what is fine stays fine


def test_a_shard_of_fill_values_only_is_not_stored_and_reads_as_fill(tmp_path: Path) -> None:
    """zarr leaves out a shard that is all fill value (write_empty_chunks=False): the file list leaves it
    out too, and the split opens and reads it as fill (all ignore) instead of calling it missing."""
    from simformer_cli.artifacts.split import SplitArtifact
    from simformer_cli.pipeline.split import run_split

    root = make_folder_dataset(tmp_path / "d")
    for label in (root / "labels" / "train").iterdir():  # only novel classes (car) and ignore in every train label
        size = Image.open(label).size[::-1]
        Image.fromarray(np.where(np.arange(size[1]) % 2 == 0, 3, 255).astype(np.uint8)[None].repeat(size[0], 0)).save(label)
    result = run_split(dataset="folder", root=root, out=tmp_path / "s.zarr", novel_classes="car,person", workers=1)
    assert not (result.path / "train" / "labels" / "c").exists()
    assert not any(key.startswith("train/labels/c/") for key in result.manifest.files)
    split = SplitArtifact(result.path)
    assert all((split.label("train", i) == 255).all() for i in range(split.count("train")))
    assert all((label == 255).all() for label in split.read_range("train", 0, split.count("train"), labels=True)[1])


def test_a_split_with_a_missing_file_is_rebuilt_by_a_plain_rerun(shared, tmp_path: Path) -> None:  # noqa: ANN001
    """Damage that opening sees (a missing or resized file) makes the artifact count as absent: rerunning
    the stage rebuilds it, without --force, to the same bytes and digest."""
    from simformer_cli.artifacts.split import SplitArtifact
    from simformer_cli.pipeline.split import run_split

    split = copy_artifact(shared["split"], tmp_path / "split.zarr")
    shard = shard_file(split / "train" / "labels")
    original = shard.read_bytes()
    shard.unlink()
    again = run_split(dataset="folder", root=shared["data"], out=split, novel_classes="car,person", workers=1)
    assert not again.skipped and shard.read_bytes() == original
    assert again.digest == json.loads((shared["split"] / "manifest.json").read_text())["digest"]
    SplitArtifact(split)


def test_the_file_list_is_what_the_manifest_records(shared) -> None:  # noqa: ANN001
    """Every stored file is listed with its size, the manifest aside, and nothing else is."""
    for name in ("split", "model", "predictions", "pseudo"):
        artifact = shared[name]
        body = json.loads((artifact / "manifest.json").read_text())["manifest"]
        on_disk = {path.relative_to(artifact).as_posix(): path.stat().st_size for path in artifact.rglob("*")
                   if path.is_file() and path.relative_to(artifact).as_posix() != "manifest.json"}
        assert body["files"] == on_disk, name
