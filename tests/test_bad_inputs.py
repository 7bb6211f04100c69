"""The bad-input catalogue: every case gets exit 2, one line on stderr (what is wrong and how to fix
it), no traceback, nothing on stdout, nothing written and no existing file touched.

Cases already covered elsewhere (``test_split_errors.py`` and friends) are listed, with their
messages, in ``docs/bad_inputs.md`` next to these. Each case here also checks that its message is
the one in that table; after changing a message, regenerate the table with
``SIMFORMER_WRITE_BAD_INPUTS_DOC=1 python -m pytest tests/test_bad_inputs*.py`` (machinery: ``refusals.py``).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from simformer_cli.errors import UserError

from conftest import make_folder_dataset
from refusals import (  # noqa: F401 - fixtures
    DOC, Refusals, copy_artifact, edit_manifest, png_header_only, refusals, shared, split_args, tree_state,
)


# ---------------------------------------------------------------- datasets (split)


def test_empty_dataset_root(refusals: Refusals, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    refusals.check("dataset-empty-root", "`--dataset folder` with an empty `--root`",
                   split_args(tmp_path / "empty", tmp_path / "s.zarr"), "classes.json")


def test_empty_dataset_root_ade20k(refusals: Refusals, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    refusals.check("dataset-empty-root-ade20k", "`--dataset ade20k` with an empty `--root`",
                   ["split", "--dataset", "ade20k", "--root", tmp_path / "empty", "--out", tmp_path / "s.zarr"],
                   "ADEChallengeData2016")


def test_wrongly_laid_out_folder_root(refusals: Refusals, tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "d")
    (root / "images").rename(root / "pictures")  # images/ is where the format wants them
    refusals.check("dataset-wrong-layout-folder", "folder dataset without `images/train`",
                   split_args(root, tmp_path / "s.zarr"), "images/train")


def test_wrongly_laid_out_ade20k_root(refusals: Refusals, tmp_path: Path) -> None:
    base = tmp_path / "d" / "ADEChallengeData2016"
    (base / "images" / "training").mkdir(parents=True)
    (base / "images" / "validation").mkdir(parents=True)
    refusals.check("dataset-wrong-layout-ade20k", "ADE20K images without any annotations folder",
                   ["split", "--dataset", "ade20k", "--root", tmp_path / "d", "--out", tmp_path / "s.zarr"])


def test_corrupt_png_label(refusals: Refusals, tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "d")
    (root / "labels" / "train" / "img001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    refusals.check("label-corrupt-png", "a label PNG that is not a PNG", split_args(root, tmp_path / "s.zarr"),
                   "img001.png")


def test_truncated_png_image(refusals: Refusals, tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "d", sizes={"train": [(64, 64), (64, 64)], "val": [(64, 64)]})
    path = root / "images" / "train" / "img001.png"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    refusals.check("image-truncated-png", "an image PNG cut short", split_args(root, tmp_path / "s.zarr"), "img001.png")


def test_truncated_png_label(refusals: Refusals, tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "d", sizes={"train": [(64, 64), (64, 64)], "val": [(64, 64)]})
    path = root / "labels" / "val" / "img000.png"
    noisy = np.random.default_rng(0).integers(0, 6, (64, 64)).astype(np.uint8)  # incompressible: a long file
    Image.fromarray(noisy).save(path)
    path.write_bytes(path.read_bytes()[:-120])
    refusals.check("label-truncated-png", "a label PNG cut short", split_args(root, tmp_path / "s.zarr"), "img000.png")


def test_colour_label(refusals: Refusals, tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "d")
    path = root / "labels" / "train" / "img000.png"
    Image.fromarray(np.stack([np.asarray(Image.open(path))] * 3, axis=-1)).save(path)
    refusals.check("label-colour", "an RGB label (colours instead of class ids)", split_args(root, tmp_path / "s.zarr"),
                   "img000.png", "RGB")


def test_decompression_bomb_image(refusals: Refusals, tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "d")
    (root / "images" / "train" / "img002.png").write_bytes(png_header_only(50_000, 50_000))
    refusals.check("image-too-large", "an image whose header claims 50000x50000 pixels (decompression bomb)",
                   split_args(root, tmp_path / "s.zarr"), "img002.png", "too large")


def test_unknown_dataset(refusals: Refusals, tmp_path: Path) -> None:
    refusals.check("option-dataset-unknown", "`--dataset imagenet`",
                   ["split", "--dataset", "imagenet", "--out", tmp_path / "s.zarr"], "--dataset")


def test_official_split_of_a_folder_dataset(refusals: Refusals, tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "d")
    refusals.check("option-official-split-folder", "`--official-split` with `--dataset folder`",
                   split_args(root, tmp_path / "s.zarr", "--official-split", "1"), "--official-split")


def test_bad_synthetic_size(refusals: Refusals, tmp_path: Path) -> None:
    refusals.check("option-synthetic-size", "`--synthetic-size 8` (below 32)",
                   ["split", "--dataset", "synthetic", "--synthetic-size", "8", "--out", tmp_path / "s.zarr"], "synthetic")


def test_negative_split_workers(refusals: Refusals, tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "d")
    refusals.check("option-workers-negative-split", "`split --workers -1`",
                   ["split", "--dataset", "folder", "--root", root, "--out", tmp_path / "s.zarr", "--workers", "-1"],
                   "--workers")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(label=arrays(np.uint8, (6, 7), elements=st.one_of(st.integers(0, 5), st.just(255), st.integers(0, 255))))
def test_random_label_values_are_accepted_exactly_when_valid(cli, tmp_path_factory, label: np.ndarray) -> None:  # noqa: ANN001
    """Classes 0..5 and ignore 255 are the only valid values; any other is named with its file."""
    root = make_folder_dataset(tmp_path_factory.mktemp("labels") / "d", sizes={"train": [(6, 7), (6, 7)], "val": [(6, 7)]})
    Image.fromarray(label).save(root / "labels" / "train" / "img001.png")
    out = root.parent / "s.zarr"
    result = cli(*split_args(root, out))
    invalid = sorted(set(np.unique(label).tolist()) - {0, 1, 2, 3, 4, 5, 255})
    if not invalid:
        assert result.code == 0, result.err
        return
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert "img001.png" in result.err and str(invalid[0]) in result.err
    assert not out.exists() and sorted(p.name for p in out.parent.iterdir()) in (["d"], [".s.zarr.lock", "d"])


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=12))
def test_scale_lists_are_parsed_or_refused_in_one_line(text: str) -> None:
    from simformer_cli.cli.options import floats

    try:
        values = floats("--scales", text)
    except UserError as exc:
        assert "--scales" in str(exc) and "\n" not in str(exc)
    else:
        assert values and all(v > 0 for v in values)


# ---------------------------------------------------------------- artifacts given as inputs


def test_split_path_that_does_not_exist(refusals: Refusals, tmp_path: Path) -> None:
    refusals.check("artifact-missing", "`--split` names nothing",
                   ["train", "--split", tmp_path / "nope.zarr", "--out", tmp_path / "m.zarr"], "no such artifact")


def test_directory_that_is_not_an_artifact(refusals: Refusals, tmp_path: Path) -> None:
    folder = tmp_path / "folder.zarr"
    folder.mkdir()
    (folder / "zarr.json").write_text("{}")
    refusals.check("artifact-not-an-artifact", "`--split` is a directory without `manifest.json`",
                   ["train", "--split", folder, "--out", tmp_path / "m.zarr"], "not a simformer artifact")


def test_artifact_of_the_wrong_kind_as_split(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    refusals.check("artifact-wrong-kind-split", "a model artifact given as `--split`",
                   ["train", "--split", shared["model"], "--out", tmp_path / "m.zarr"], "'model' artifact")


def test_artifact_of_the_wrong_kind_as_model(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    refusals.check("artifact-wrong-kind-model", "a split artifact given as `--model`",
                   ["infer", "--model", shared["split"], "--split", shared["split"], "--out", tmp_path / "p.zarr"],
                   "'split' artifact")


def test_hand_edited_manifest(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    split = copy_artifact(shared["split"], tmp_path / "split.zarr")
    edit_manifest(split, lambda body: body.update(novel_classes=[1, 2]), keep_digest_valid=False)
    refusals.check("manifest-edited", "a split manifest edited by hand (novel classes changed)",
                   ["train", "--split", split, "--out", tmp_path / "m.zarr"], "digest mismatch")


def test_manifest_from_a_future_version(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    split = copy_artifact(shared["split"], tmp_path / "split.zarr")
    edit_manifest(split, lambda body: body.update(schema_version=99), keep_digest_valid=True)
    refusals.check("manifest-schema-version", "a manifest of an unknown schema version",
                   ["train", "--split", split, "--out", tmp_path / "m.zarr"], "schema version 99")


def test_split_of_the_decoded_pixels_layout(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    split = copy_artifact(shared["split"], tmp_path / "split.zarr")
    edit_manifest(split, lambda body: body.update(schema_version=1), keep_digest_valid=True)
    refusals.check("split-schema-1", "a split of schema 1 (made before splits kept JPEG images as their files)",
                   ["train", "--split", split, "--out", tmp_path / "m.zarr"], "schema version 1", "version 2",
                   "rebuild it")


def test_split_manifest_whose_image_files_are_not_files(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    split = copy_artifact(shared["split"], tmp_path / "split.zarr")
    edit_manifest(split, lambda body: body["arrays"]["val/image_files"].update(dtype="uint8"), keep_digest_valid=True)
    refusals.check("manifest-split-image-files", "a split manifest whose `val/image_files` are not files (digest valid)",
                   ["train", "--split", split, "--out", tmp_path / "m.zarr"], "val/image_files must be an array of 2 files")


def test_manifest_with_an_unknown_field(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    split = copy_artifact(shared["split"], tmp_path / "split.zarr")
    edit_manifest(split, lambda body: body.update(surprise=1), keep_digest_valid=True)
    refusals.check("manifest-unknown-field", "a manifest with a field this version does not know (digest valid)",
                   ["train", "--split", split, "--out", tmp_path / "m.zarr"], "surprise")


def test_manifest_that_is_not_json(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    split = copy_artifact(shared["split"], tmp_path / "split.zarr")
    (split / "manifest.json").write_text("{half a manifest")
    refusals.check("manifest-not-json", "`manifest.json` is not JSON",
                   ["train", "--split", split, "--out", tmp_path / "m.zarr"], "unreadable")


def test_artifact_with_a_missing_array(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    split = copy_artifact(shared["split"], tmp_path / "split.zarr")
    shutil.rmtree(split / "val" / "images")
    refusals.check("artifact-array-missing", "a split whose `val/images` array was deleted",
                   ["infer", "--model", shared["model"], "--split", split, "--out", tmp_path / "p.zarr",
                    "--device", "cpu"], "'val/images' is missing")


def test_artifact_with_a_resized_array(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    split = copy_artifact(shared["split"], tmp_path / "split.zarr")
    metadata = json.loads((split / "val" / "sizes" / "zarr.json").read_text())
    metadata["shape"] = [metadata["shape"][0] + 5, 2]
    (split / "val" / "sizes" / "zarr.json").write_text(json.dumps(metadata))
    refusals.check("artifact-array-shape", "a split array whose shape differs from the manifest's",
                   ["train", "--split", split, "--out", tmp_path / "m.zarr"], "'val/sizes'")


def test_model_without_weights(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    model = copy_artifact(shared["model"], tmp_path / "model.zarr")
    (model / "weights.safetensors").unlink()
    refusals.check("model-weights-missing", "a model artifact without its weights file",
                   ["infer", "--model", model, "--split", shared["split"], "--out", tmp_path / "p.zarr", "--device", "cpu"],
                   "weights.safetensors is missing")


def test_model_with_changed_weights(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    model = copy_artifact(shared["model"], tmp_path / "model.zarr")
    data = bytearray((model / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (model / "weights.safetensors").write_bytes(bytes(data))
    refusals.check("model-weights-changed", "weights whose bytes differ from the manifest's sha256",
                   ["infer", "--model", model, "--split", shared["split"], "--out", tmp_path / "p.zarr", "--device", "cpu"],
                   "does not match")


# ---------------------------------------------------------------- artifacts that do not belong together


def test_infer_on_another_split(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    refusals.check("mismatch-infer-split", "`infer` with a split the model was not trained on",
                   ["infer", "--model", shared["model"], "--split", shared["other"], "--out", tmp_path / "p.zarr",
                    "--device", "cpu"], "trained on another split")


def test_pseudolabel_on_another_split(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    refusals.check("mismatch-pseudolabel-split", "`pseudolabel` with a split the model was not trained on",
                   ["pseudolabel", "--model", shared["model"], "--split", shared["other"], "--out", tmp_path / "pl.zarr",
                    "--device", "cpu"], "trained on another split")


def test_eval_predictions_of_another_split(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    refusals.check("mismatch-eval-split", "`eval` of predictions made on another split",
                   ["eval", "--predictions", shared["predictions"], "--split", shared["other"], "--out", tmp_path / "m.zarr"],
                   "another split")


def test_eval_predictions_of_loose_images(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    refusals.check("mismatch-eval-images", "`eval` of predictions made on a folder of images",
                   ["eval", "--predictions", shared["photo_predictions"], "--split", shared["split"], "--out",
                    tmp_path / "m.zarr"], "no ground truth")


def test_retrain_with_pseudolabels_of_another_split(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    refusals.check("mismatch-retrain-pseudolabels", "`retrain` with pseudo labels made from another split",
                   ["retrain", "--split", shared["other"], "--pseudolabels", shared["pseudo"], "--out", tmp_path / "rt.zarr"],
                   "another split")


def test_viz_of_split_predictions_without_the_split(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    refusals.check("mismatch-viz-no-split", "`viz` of split predictions without `--split`",
                   ["viz", "--predictions", shared["predictions"], "--out", tmp_path / "viz"], "--split")


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(("case", "option", "value", "fragment"), [
    ("option-iters-zero", "--iters", "0", "--iters 0"),
    ("option-batch-size-odd", "--batch-size", "3", "must be even"),
    ("option-batch-size-zero", "--batch-size", "0", "--batch-size 0"),
    ("option-lr-zero", "--lr", "0", "--lr"),
    ("option-seed-negative", "--seed", "-1", "--seed -1"),
    ("option-checkpoint-every-zero", "--checkpoint-every", "0", "--checkpoint-every 0"),
    ("option-workers-negative-train", "--workers", "-1", "--workers -1"),
    ("option-preset-unknown", "--preset", "huge", "--preset"),
    ("option-iters-not-a-number", "--iters", "abc", "--iters"),
    ("option-backbone-weights-missing", "--backbone-weights", "nowhere/R-50.pth", "no such file"),
])
def test_bad_training_options(refusals: Refusals, shared, tmp_path: Path, case: str, option: str, value: str,
                              fragment: str) -> None:  # noqa: ANN001
    refusals.check(case, f"`train {option} {value}`",
                   ["train", "--split", shared["split"], "--out", tmp_path / "m.zarr", "--device", "cpu", option, value],
                   fragment)


def test_resume_without_a_checkpoint(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    refusals.check("resume-no-checkpoint", "`train --resume` with no checkpoint to resume from",
                   ["train", "--split", shared["split"], "--out", tmp_path / "m.zarr", "--device", "cpu", "--resume"],
                   "no checkpoint")


def test_missing_required_option(refusals: Refusals, tmp_path: Path) -> None:
    refusals.check("usage-missing-option", "`train` without `--split`", ["train", "--out", tmp_path / "m.zarr"],
                   "--split", "--help")


def test_unknown_option(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    refusals.check("usage-unknown-option", "a misspelt option (`--iter`)",
                   ["train", "--split", shared["split"], "--iter", "3"], "--iter")


def test_unknown_command(refusals: Refusals) -> None:
    refusals.check("usage-unknown-command", "a misspelt command (`trian`)", ["trian"], "trian")


@pytest.mark.parametrize(("case", "extra", "fragment"), [
    ("option-scales-negative", ["--scales", "-1"], "--scales"),
    ("option-scales-not-numbers", ["--scales", "0.5,big"], "--scales"),
    ("option-scales-nan", ["--scales", "nan"], "--scales"),
    ("option-subset-unknown", ["--subset", "testing"], "--subset"),
    ("option-subset-absent", ["--subset", "test"], "has no test subset"),
    ("option-device-unknown", ["--device", "tpu"], "--device"),
])
def test_bad_inference_options(refusals: Refusals, shared, tmp_path: Path, case: str, extra: list[str],
                               fragment: str) -> None:  # noqa: ANN001
    refusals.check(case, f"`infer {' '.join(extra)}`",
                   ["infer", "--model", shared["model"], "--split", shared["split"], "--out", tmp_path / "p.zarr", *extra],
                   fragment)


def test_cuda_without_a_gpu_for_infer(refusals: Refusals, shared, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU, wherever it runs
    refusals.check("device-cuda-without-gpu-infer", "`infer --device cuda` on a machine without a GPU",
                   ["infer", "--model", shared["model"], "--split", shared["split"], "--out", tmp_path / "p.zarr",
                    "--device", "cuda"], "no CUDA GPU")


def test_cuda_without_a_gpu_for_train(refusals: Refusals, shared, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU, wherever it runs
    refusals.check("device-cuda-without-gpu-train", "`train --device cuda` on a machine without a GPU",
                   ["train", "--split", shared["split"], "--out", tmp_path / "m.zarr", "--device", "cuda"], "no CUDA GPU")


def test_infer_needs_one_source(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    refusals.check("infer-no-source", "`infer` with neither `--split` nor `--images`",
                   ["infer", "--model", shared["model"], "--out", tmp_path / "p.zarr", "--device", "cpu"], "--images")
    refusals.check("infer-two-sources", "`infer` with both `--split` and `--images`",
                   ["infer", "--model", shared["model"], "--split", shared["split"], "--images", shared["photos"],
                    "--out", tmp_path / "p.zarr", "--device", "cpu"], "--images")


def test_images_folder_missing_or_empty(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    refusals.check("images-folder-missing", "`infer --images` names no folder",
                   ["infer", "--model", shared["model"], "--images", tmp_path / "nope", "--out", tmp_path / "p.zarr",
                    "--device", "cpu"], "no such folder")
    (tmp_path / "empty").mkdir()
    refusals.check("images-folder-empty", "`infer --images` folder without images",
                   ["infer", "--model", shared["model"], "--images", tmp_path / "empty", "--out", tmp_path / "p.zarr",
                    "--device", "cpu"], "no .jpg")


def test_missing_model(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    refusals.check("model-missing", "`--model` names nothing",
                   ["infer", "--model", tmp_path / "model.zarr", "--split", shared["split"], "--out", tmp_path / "p.zarr",
                    "--device", "cpu"], "no such artifact")


@pytest.mark.parametrize(("case", "value"), [("option-min-score-above-one", "2"), ("option-min-score-negative", "-0.5")])
def test_min_score_out_of_range(refusals: Refusals, shared, tmp_path: Path, case: str, value: str) -> None:  # noqa: ANN001
    refusals.check(case, f"`pseudolabel --min-score {value}`",
                   ["pseudolabel", "--model", shared["model"], "--split", shared["split"], "--out", tmp_path / "pl.zarr",
                    "--min-score", value], "--min-score")


def test_export_coco_into_a_folder(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    (tmp_path / "results").mkdir()
    refusals.check("export-coco-out-folder", "`export --format coco --out` names a folder",
                   ["export", "--predictions", shared["predictions"], "--format", "coco", "--out", tmp_path / "results"],
                   "JSON file")


# ---------------------------------------------------------------- where the output goes


def test_output_whose_parent_is_a_file(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    # Root ignores permission bits, so "unwritable" is made the honest way: the parent is a file.
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    refusals.check("output-parent-is-a-file", "`--out` inside something that is a file, not a folder",
                   ["train", "--split", shared["split"], "--out", tmp_path / "notes.txt" / "m.zarr", "--device", "cpu",
                    "--iters", "1", "--batch-size", "2"], "choose another --out")


def test_synthetic_output_whose_parent_is_a_file(refusals: Refusals, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    refusals.check("output-parent-is-a-file-synthetic", "`split --dataset synthetic --out` inside a file",
                   ["split", "--dataset", "synthetic", "--synthetic-train", "4", "--synthetic-val", "2",
                    "--synthetic-size", "32", "--out", tmp_path / "notes.txt" / "s.zarr"], "choose another --out")


def test_output_that_is_a_file(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    (tmp_path / "p.zarr").write_text("precious")
    refusals.check("output-is-a-file", "`--out` is an existing file",
                   ["infer", "--model", shared["model"], "--split", shared["split"], "--out", tmp_path / "p.zarr",
                    "--device", "cpu"], "not a simformer artifact")


def test_output_that_is_a_folder_of_other_files(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    (tmp_path / "m.zarr").mkdir()
    (tmp_path / "m.zarr" / "keep.txt").write_text("mine")
    refusals.check("output-is-another-folder", "`eval --out` is a folder of other files",
                   ["eval", "--predictions", shared["predictions"], "--split", shared["split"], "--out", tmp_path / "m.zarr"],
                   "refusing to overwrite")


def _unshare_works() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt 2>/dev/null || "
                            "mount -t tmpfs -o size=64k none /tmp"], capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not _unshare_works(), reason="needs a private mount namespace (root, unshare -m)")


def run_in_namespace(setup: str, args: list, after: str = "") -> subprocess.CompletedProcess:
    """Run the CLI in a private mount namespace after ``setup`` (mounts vanish with it)."""
    command = " ".join(f"'{a}'" for a in [sys.executable, "-m", "simformer_cli", *map(str, args)])
    script = f"set -e; {setup}; set +e; {command}; code=$?; {after or 'true'}; exit $code"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=300)


@needs_mounts
def test_read_only_output_folder(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    target = tmp_path / "ro"
    target.mkdir()
    before = tree_state(*refusals.roots)
    done = run_in_namespace(f"mount --bind '{target}' '{target}'; mount -o remount,ro,bind '{target}'",
                            ["split", "--dataset", "folder", "--root", shared["data"], "--out", target / "s.zarr",
                             "--workers", "1"])
    refusals.verify("output-read-only", "`--out` in a read-only folder (a read-only bind mount, so that even root "
                    "cannot write)", done.returncode, done.stdout, done.stderr, before, "not writable")


@needs_mounts
def test_read_only_output_folder_synthetic(refusals: Refusals, tmp_path: Path) -> None:
    target = tmp_path / "ro"
    target.mkdir()
    before = tree_state(*refusals.roots)
    done = run_in_namespace(f"mount --bind '{target}' '{target}'; mount -o remount,ro,bind '{target}'",
                            ["split", "--dataset", "synthetic", "--synthetic-train", "4", "--synthetic-val", "2",
                             "--synthetic-size", "32", "--out", target / "s.zarr"])
    refusals.verify("output-read-only-synthetic", "`split --dataset synthetic --out` in a read-only folder",
                    done.returncode, done.stdout, done.stderr, before, "Read-only file system")


@needs_mounts
@pytest.mark.parametrize(("case", "size", "stage"), [
    ("disk-full-split", "24k", "split"), ("disk-full-train", "600k", "train"), ("disk-full-infer", "24k", "infer")])
def test_full_disk_in_a_small_tmpfs(refusals: Refusals, shared, tmp_path: Path, case: str, size: str,
                                    stage: str) -> None:  # noqa: ANN001
    """A real full disk: the output goes to a tmpfs of a few kilobytes; what is left there is listed."""
    target = tmp_path / "small"
    target.mkdir()
    args = {
        "split": ["split", "--dataset", "folder", "--root", shared["data"], "--out", target / "s.zarr", "--workers", "1"],
        "train": ["train", "--split", shared["split"], "--out", target / "m.zarr", "--iters", "2", "--batch-size", "2",
                  "--device", "cpu"],
        "infer": ["infer", "--model", shared["model"], "--split", shared["split"], "--out", target / "p.zarr",
                  "--device", "cpu", "--save-scores"],
    }[stage]
    before = tree_state(*refusals.roots)
    done = run_in_namespace(f"mount -t tmpfs -o size={size} none '{target}'", args, after=f"ls -A '{target}'")
    left = [name for name in done.stdout.split() if not name.endswith(".lock")]
    expected_left = [f".{Path(args[args.index('--out') + 1]).name}.partial"] if stage in ("train", "infer") else []
    assert left == expected_left, (left, done.stderr)  # resumable stages keep their work for the rerun
    refusals.verify(case, f"disk full while `{stage}` writes (a {size} tmpfs)", done.returncode, "", done.stderr,
                    before, "disk full", after_warnings=True)


def test_full_disk_while_writing_arrays(refusals: Refusals, shared, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """The same without mount rights: every zarr write after the first few fails with ENOSPC."""
    import zarr.storage._local as local

    real_put = local._put
    calls = {"n": 0}

    def put(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_put(*args, **kwargs)

    monkeypatch.setattr(local, "_put", put)
    out = tmp_path / "s.zarr"
    refusals.check("disk-full-zarr-write", "disk full while the split's arrays are written (simulated ENOSPC)",
                   split_args(shared["data"], out), "disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.zarr.lock"]
