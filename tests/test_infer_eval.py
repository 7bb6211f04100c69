"""infer -> eval -> viz on tiny data: sizes, folders of images, refusals, resume by shard."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.artifacts.predictions import PredictionsArtifact
from simformer_cli.pipeline.infer import run_infer
from simformer_cli.pipeline.split import run_split
from simformer_cli.pipeline.train import run_train

from conftest import make_folder_dataset


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, Path, Path]:  # noqa: ANN001
    """A split of mixed-size images and a one-step model trained on it."""
    base = tmp_path_factory.mktemp("mixed")
    root = make_folder_dataset(base / "data", sizes={"train": [(40, 56), (33, 47), (64, 40), (48, 48)],
                                                     "val": [(37, 61), (52, 35), (45, 45)]})
    split = run_split(dataset="folder", root=root, out=base / "split.zarr", workers=1).path
    model = run_train(split=split, out=base / "model.zarr", iters=1, batch_size=2, device="cpu").path
    return root, split, model


def test_infer_writes_each_map_at_its_image_size(cli, mixed, tmp_path: Path) -> None:
    _, split, model = mixed
    out = tmp_path / "pred.zarr"
    result = cli("infer", "--model", model, "--split", split, "--out", out, "--device", "cpu", "--save-scores",
                 "--scales", "0.75,1", "--flip", "--json")
    assert result.code == 0, result.err
    predictions = PredictionsArtifact(out)
    sizes = SplitArtifact(split).sizes("val")
    assert predictions.count() == len(sizes)
    for index, (h, w) in enumerate(sizes):
        label = predictions.label(index)
        assert label.shape == (h, w)
        assert label.max() < 6
        assert predictions.scores(index).shape == (6, -(-h // 4), -(-w // 4))
    assert json.loads(result.out)["params"]["test_time"]["flip"] is True


def test_infer_on_a_folder_of_images_and_viz(cli, mixed, tmp_path: Path) -> None:
    root, _, model = mixed
    photos = tmp_path / "photos"
    shutil.copytree(root / "images" / "val", photos)
    out = tmp_path / "pred.zarr"
    assert cli("infer", "--model", model, "--images", photos, "--out", out, "--device", "cpu").code == 0
    predictions = PredictionsArtifact(out)
    assert predictions.names() == sorted(p.stem for p in photos.iterdir())
    assert predictions.label(1).shape == np.asarray(Image.open(photos / "img001.png")).shape[:2]
    result = cli("viz", "--predictions", out, "--images", photos, "--out", tmp_path / "viz")
    assert result.code == 0, result.err
    pictures = sorted((tmp_path / "viz").glob("*.png"))  # beside the hidden .simformer.json marker
    assert len(pictures) == 3 and Image.open(pictures[0]).mode == "RGB"
    refused = cli("eval", "--predictions", out, "--split", mixed[1])
    assert refused.code == 2 and "no ground truth" in refused.err


def test_eval_report_chart_and_refusals(cli, mixed, tmp_path: Path) -> None:
    root, split, model = mixed
    predictions = run_infer(model=model, split=split, out=tmp_path / "pred.zarr", device="cpu").path
    result = cli("eval", "--predictions", predictions, "--split", split, "--out", tmp_path / "m.zarr", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert {"miou", "base_miou", "novel_miou", "hiou", "miou_present_only", "pixel_accuracy", "per_class"} <= set(report)
    assert {row["split_role"] for row in report["per_class"]} == {"base", "novel"}
    assert (tmp_path / "m.zarr" / "iou.png").is_file()
    assert "boundary" not in report  # off unless asked for
    banded = cli("eval", "--predictions", predictions, "--split", split, "--out", tmp_path / "b.zarr",
                 "--boundary-band", "3", "--no-chart", "--json")
    assert banded.code == 0, banded.err
    boundary = json.loads(banded.out)["boundary"]
    assert boundary["width"] == 3 and 0 < boundary["pixels"] < sum(row["gt_pixels"] for row in report["per_class"])
    assert 0 <= boundary["miou"] <= 100 and "px of label edges" in banded.err
    too_wide = cli("eval", "--predictions", predictions, "--split", split, "--boundary-band", "65")
    assert too_wide.code == 2 and "--boundary-band 65" in too_wide.err
    other = run_split(dataset="folder", root=root, out=tmp_path / "other.zarr", seed=5, workers=1).path
    refused = cli("eval", "--predictions", predictions, "--split", other)
    assert refused.code == 2 and "another split" in refused.err
    wrong_kind = cli("eval", "--predictions", split, "--split", split)
    assert wrong_kind.code == 2 and "'split' artifact" in wrong_kind.err
    viz = cli("viz", "--predictions", predictions, "--split", split, "--out", tmp_path / "viz", "--limit", "2")
    assert viz.code == 0 and len(list((tmp_path / "viz").glob("*.png"))) == 2


def test_infer_refuses_a_split_the_model_was_not_trained_on(cli, mixed, tmp_path: Path) -> None:
    root, _, model = mixed
    other = run_split(dataset="folder", root=root, out=tmp_path / "other.zarr", seed=9, workers=1).path
    result = cli("infer", "--model", model, "--split", other, "--out", tmp_path / "p.zarr", "--device", "cpu")
    assert result.code == 2 and "trained on another split" in result.err
    assert not (tmp_path / "p.zarr").exists()


def test_interrupted_infer_continues_by_shard(mixed, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import simformer_cli.artifacts.layout as store
    from simformer_cli.inference import predict as infer_module

    _, split, model = mixed
    monkeypatch.setattr(store, "MAX_SHARD_IMAGES", 1)  # one image per shard
    calls = {"n": 0}
    original = infer_module.predict_scores

    def failing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(infer_module, "predict_scores", failing)
    out = tmp_path / "pred.zarr"
    with pytest.raises(KeyboardInterrupt):
        run_infer(model=model, split=split, out=out, device="cpu")
    assert not out.exists()
    monkeypatch.setattr(infer_module, "predict_scores", original)
    counted = {"n": 0}

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        counted["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(infer_module, "predict_scores", counting)
    resumed = run_infer(model=model, split=split, out=out, device="cpu")
    assert counted["n"] == 1  # two of three shards were already done
    straight = run_infer(model=model, split=split, out=tmp_path / "straight.zarr", device="cpu")
    first, second = PredictionsArtifact(resumed.path), PredictionsArtifact(straight.path)
    for index in range(first.count()):
        assert np.array_equal(first.label(index), second.label(index))


def test_export_coco_rle_and_png(cli, mixed, tmp_path: Path) -> None:
    from pycocotools import mask as mask_utils

    _, split, model = mixed
    predictions = run_infer(model=model, split=split, out=tmp_path / "pred.zarr", device="cpu").path
    result = cli("export", "--predictions", predictions, "--format", "coco", "--out", tmp_path / "results.json")
    assert result.code == 0, result.err
    document = json.loads((tmp_path / "results.json").read_text())
    artifact = PredictionsArtifact(predictions)
    names = artifact.names()
    for index, name in enumerate(names):
        label = artifact.label(index)
        rebuilt = np.full(label.shape, 255, dtype=np.uint8)
        for entry in (e for e in document["annotations"] if e["image_id"] == name):
            rle = dict(entry["segmentation"], counts=entry["segmentation"]["counts"].encode())
            rebuilt[mask_utils.decode(rle).astype(bool)] = entry["category_id"]
        assert np.array_equal(rebuilt, label)
    assert [c["id"] for c in document["categories"]] == list(range(6))
    assert cli("export", "--predictions", predictions, "--format", "png", "--out", tmp_path / "png").code == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "png" / f"{names[0]}.png")), artifact.label(0))
    bad = cli("export", "--predictions", predictions, "--format", "tiff", "--out", tmp_path / "x")
    assert bad.code == 2 and "--format" in bad.err
