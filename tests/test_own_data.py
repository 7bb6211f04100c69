"""Your own data: base classes as masks, the classes you add as tags (``split --tags``)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from pycocotools import mask as mask_utils

from simformer_cli.artifacts.predictions import PredictionsArtifact
from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.data.coco_json import load_coco_json
from simformer_cli.data.tags import read_tags
from simformer_cli.pipeline.infer import run_infer
from simformer_cli.pipeline.split import run_split
from simformer_cli.pipeline.train import run_train

from conftest import make_folder_dataset, write_png
from own_data import category_id, tags_of, to_base_masks, to_coco, write_tags

NOVEL = ["car", "person"]
#: What the benchmark route and the tags route must store alike (the full train labels aside).
SHARED_ARRAYS = ("train/images", "train/labels", "train/sizes", "train/image_labels",
                 "val/images", "val/labels", "val/sizes", "val/image_labels")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:  # noqa: ANN001
    base = tmp_path_factory.mktemp("own-data")
    full = make_folder_dataset(base / "full")
    own = to_base_masks(full, base / "own", NOVEL)
    return {"base": base, "full": full, "own": own}


def arrays(split: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(split), mode="r")
    return {name: np.asarray(group[name][...]) for name in SHARED_ARRAYS}


@pytest.mark.parametrize("form", ["list", "pairs", "json"])
def test_the_three_tag_file_forms_read_alike(datasets: dict[str, Path], tmp_path: Path, form: str) -> None:
    tags = tags_of(datasets["full"], NOVEL)
    tags[list(tags)[-1]] = []  # an image showing no tagged class
    assert sum(len(names) > 1 for names in tags.values()) >= 1  # and one showing two
    path = write_tags(tmp_path / f"tags.{'json' if form == 'json' else 'csv'}", tags, form)
    parsed = read_tags(path)
    assert parsed.rows == {image: tuple(names) for image, names in tags.items()}
    assert parsed.digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_tags_route_stores_what_the_benchmark_route_stores_and_trains_bit_identically(
        datasets: dict[str, Path], tmp_path: Path) -> None:
    """Done-when: base masks + tags give the benchmark route's weak labels and image-level labels,
    so a few training steps give the same weights, bit for bit, on CPU."""
    tags = write_tags(datasets["own"] / "tags.csv", tags_of(datasets["full"], NOVEL), "list")
    benchmark = run_split(dataset="folder", root=datasets["full"], out=tmp_path / "bench.zarr",
                          novel_classes=",".join(NOVEL), workers=1)
    tagged = run_split(dataset="folder", root=datasets["own"], tags=tags, out=tmp_path / "tags.zarr", workers=1)
    assert tagged.manifest.novel_classes == benchmark.manifest.novel_classes
    assert tagged.manifest.params.selection == "tags" and tagged.manifest.params.requested_novel == NOVEL
    assert tagged.manifest.label_coverage == {"train": "base", "val": "full"}
    expected, got = arrays(benchmark.path), arrays(tagged.path)
    for name in SHARED_ARRAYS:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert got["train/image_labels"][:, benchmark.manifest.novel_classes].any()  # the tags reached the labels
    weights = []
    for split in (benchmark.path, tagged.path):
        model = run_train(split=split, out=split.with_suffix(".model.zarr"), iters=2, batch_size=2, device="cpu",
                          workers=0).path
        weights.append(hashlib.sha256((model / "weights.safetensors").read_bytes()).hexdigest())
    assert weights[0] == weights[1]


def test_provenance_records_the_tag_file_and_its_digest(datasets: dict[str, Path], tmp_path: Path) -> None:
    tags = write_tags(tmp_path / "tags.json", tags_of(datasets["full"], NOVEL), "json")
    split = run_split(dataset="folder", root=datasets["own"], tags=tags, out=tmp_path / "s.zarr", workers=1)
    labels = split.manifest.provenance.labels
    assert labels is not None and labels.novel_labels == "tags"
    assert [(f.role, f.path, f.sha256) for f in labels.files] == [
        ("tags", str(tags.absolute()), hashlib.sha256(tags.read_bytes()).hexdigest())]
    bench = run_split(dataset="folder", root=datasets["full"], novel_classes="car", out=tmp_path / "b.zarr", workers=1)
    assert bench.manifest.provenance.labels.novel_labels == "derived from full masks"
    assert bench.manifest.label_coverage is None
    assert "label_coverage" not in (bench.path / "manifest.json").read_text()  # full-mask splits keep their digest


def test_a_changed_tag_file_rebuilds_the_split(datasets: dict[str, Path], tmp_path: Path) -> None:
    tags = tags_of(datasets["full"], NOVEL)
    path = write_tags(tmp_path / "tags.csv", tags, "list")
    first = run_split(dataset="folder", root=datasets["own"], tags=path, out=tmp_path / "s.zarr", workers=1)
    again = run_split(dataset="folder", root=datasets["own"], tags=path, out=tmp_path / "s.zarr", workers=1)
    assert again.skipped and again.digest == first.digest
    image = next(iter(tags))
    tags[image] = [n for n in NOVEL if n not in tags[image]]
    write_tags(path, tags, "list")
    changed = run_split(dataset="folder", root=datasets["own"], tags=path, out=tmp_path / "s.zarr", workers=1)
    assert not changed.skipped and changed.digest != first.digest


def test_val_tagged_holds_base_masks_and_val_without_masks_holds_none(datasets: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    """Val tagged too: its masks hold base classes only; val without labels/: nothing to score."""
    own = to_base_masks(datasets["full"], tmp_path / "own", NOVEL, subsets=("train", "val"))
    tags = write_tags(tmp_path / "tags.csv", tags_of(datasets["full"], NOVEL, ("train", "val")), "pairs")
    split = run_split(dataset="folder", root=own, tags=tags, out=tmp_path / "s.zarr", workers=1)
    assert split.manifest.label_coverage == {"train": "base", "val": "base"}
    full = SplitArtifact(run_split(dataset="folder", root=datasets["full"], novel_classes=",".join(NOVEL),
                                   out=tmp_path / "b.zarr", workers=1).path)
    tagged = SplitArtifact(split.path)
    np.testing.assert_array_equal(tagged.image_labels("val"), full.image_labels("val"))
    ids = full.manifest.novel_classes
    for index in range(full.count("val")):
        expected = full.label("val", index).copy()
        expected[np.isin(expected, ids)] = full.manifest.ignore_index
        np.testing.assert_array_equal(tagged.label("val", index), expected)

    import shutil
    shutil.rmtree(own / "labels" / "val")
    train_only = write_tags(tmp_path / "train-tags.csv", tags_of(datasets["full"], NOVEL), "list")
    bare = run_split(dataset="folder", root=own, tags=train_only, out=tmp_path / "bare.zarr", workers=1)
    assert bare.manifest.label_coverage == {"train": "base", "val": "none"}
    bare_split = SplitArtifact(bare.path)
    assert (bare_split.label("val", 0) == bare.manifest.ignore_index).all()
    assert not bare_split.image_labels("val").any()


def test_a_training_image_may_show_no_tagged_class(datasets: dict[str, Path], tmp_path: Path) -> None:
    """An empty row says "none of the tagged classes here" (an absent row is refused)."""
    tags = tags_of(datasets["full"], NOVEL)
    image = next(iter(tags))
    tags[image] = []
    own = to_base_masks(datasets["full"], tmp_path / "own", NOVEL)
    for form in ("list", "pairs", "json"):
        path = write_tags(tmp_path / f"tags-{form}.{'json' if form == 'json' else 'csv'}", tags, form)
        split = SplitArtifact(run_split(dataset="folder", root=own, tags=path, out=tmp_path / f"{form}.zarr",
                                        workers=1).path)
        index = split.names("train").index(Path(image).stem)
        assert not split.image_labels("train")[index, split.manifest.novel_classes].any()


# ---------------------------------------------------------------- COCO JSON masks


def test_coco_json_route_stores_what_the_benchmark_route_stores_and_trains_bit_identically(
        datasets: dict[str, Path], tmp_path: Path) -> None:
    """Done-when, COCO form: base masks as a COCO export (RLE, non-contiguous category ids) + tags."""
    files = to_coco(datasets["full"], tmp_path / "coco", NOVEL)
    tags = write_tags(tmp_path / "tags.json", tags_of(datasets["full"], NOVEL), "json")
    benchmark = run_split(dataset="folder", root=datasets["full"], out=tmp_path / "bench.zarr",
                          novel_classes=",".join(NOVEL), workers=1)
    coco = run_split(dataset="coco-json", images=files["images"], annotations=files["train"],
                     val_annotations=files["val"], tags=tags, out=tmp_path / "coco.zarr", workers=1)
    assert coco.manifest.class_names == benchmark.manifest.class_names
    assert coco.manifest.category_ids == [category_id(c) for c in range(len(coco.manifest.class_names))]
    assert coco.manifest.label_coverage == {"train": "base", "val": "full"}
    assert [f.role for f in coco.manifest.provenance.labels.files] == ["annotations", "val-annotations", "tags"]
    expected, got = arrays(benchmark.path), arrays(coco.path)
    for name in SHARED_ARRAYS:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    weights = []
    for split in (benchmark.path, coco.path):
        model = run_train(split=split, out=split.with_suffix(".model.zarr"), iters=2, batch_size=2, device="cpu",
                          workers=0)
        weights.append(hashlib.sha256((model.path / "weights.safetensors").read_bytes()).hexdigest())
    assert weights[0] == weights[1]
    assert model.manifest.category_ids == coco.manifest.category_ids


def write_coco(path: Path, images: list[dict], annotations: list[dict], categories: dict[int, str]) -> Path:
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": i, "name": n} for i, n in categories.items()]}))
    return path


def test_coco_overlaps_crowds_polygons_and_sizes(tmp_path: Path) -> None:
    """The documented painting rule: crowd regions first, then the larger mask first, so a smaller
    region lying on a larger one stays visible whatever the file's order; uncovered = ignore."""
    images = tmp_path / "images"
    write_png(images / "a.png", np.zeros((10, 12, 3), np.uint8))
    write_png(images / "b.png", np.zeros((6, 8, 3), np.uint8))
    table, cup, crowd = 9, 40, 2  # category ids, not contiguous
    anns = [
        {"id": 1, "image_id": 1, "category_id": cup, "iscrowd": 0, "segmentation": [[4, 4, 8, 4, 8, 8, 4, 8]]},
        {"id": 2, "image_id": 1, "category_id": table, "iscrowd": 0, "segmentation": [[0, 0, 12, 0, 12, 9, 0, 9]]},
        {"id": 3, "image_id": 1, "category_id": crowd, "iscrowd": 1,
         "segmentation": {"size": [10, 12], "counts": [0, 120]}},  # the whole image, uncompressed RLE
    ]
    categories = {table: "table", cup: "cup", crowd: "people"}
    train = write_coco(tmp_path / "train.json", [{"id": 1, "file_name": "a.png", "height": 10, "width": 12}],
                       anns, categories)
    val = write_coco(tmp_path / "val.json", [{"id": 7, "file_name": "b.png", "height": 6, "width": 8}], [], categories)
    raw = load_coco_json(images, train, val)
    assert raw.class_names == ("people", "table", "cup") and raw.category_ids == (2, 9, 40)
    label = raw.subsets["train"][0].decode(raw.root, raw.lut, raw.ignore_index).label
    assert label[6, 6] == 2  # the cup lies on the table
    assert label[1, 1] == 1  # the table lies on the crowd
    assert (label[9:, :] == 0).all()  # the crowd shows where nothing else is
    empty = raw.subsets["val"][0].decode(raw.root, raw.lut, raw.ignore_index)
    assert empty.image.shape[:2] == (6, 8) and (empty.label == raw.ignore_index).all()
    assert raw.unmasked_subsets == frozenset({"val"})


def test_export_coco_gives_back_the_category_ids(datasets: dict[str, Path], tmp_path: Path, cli) -> None:  # noqa: ANN001
    files = to_coco(datasets["full"], tmp_path / "coco", NOVEL)
    tags = write_tags(tmp_path / "tags.csv", tags_of(datasets["full"], NOVEL), "pairs")
    split = run_split(dataset="coco-json", images=files["images"], annotations=files["train"],
                      val_annotations=files["val"], tags=tags, out=tmp_path / "s.zarr", workers=1).path
    model = run_train(split=split, out=tmp_path / "m.zarr", iters=1, batch_size=2, device="cpu", workers=0).path
    predictions = run_infer(model=model, split=split, out=tmp_path / "p.zarr", device="cpu")
    assert predictions.manifest.category_ids == [category_id(c) for c in range(6)]
    result = cli("export", "--predictions", predictions.path, "--format", "coco", "--out", tmp_path / "p.json")
    assert result.code == 0, result.err
    document = json.loads((tmp_path / "p.json").read_text())
    assert [c["id"] for c in document["categories"]] == [category_id(c) for c in range(6)]
    used = {entry["category_id"] for entry in document["annotations"]}
    assert used and used <= {category_id(c) for c in range(6)}
    val_ids = {Path(e["file_name"]).stem: e["id"] for e in json.loads(files["val"].read_text())["images"]}
    reader = PredictionsArtifact(predictions.path)
    assert {entry["image_id"] for entry in document["annotations"]} <= set(val_ids.values())
    first = [entry for entry in document["annotations"] if entry["image_id"] == val_ids[reader.names()[0]]]
    assert first
    for entry in first:  # each mask is the predicted class's pixels, under its own category id
        class_id = [category_id(c) for c in range(6)].index(entry["category_id"])
        np.testing.assert_array_equal(mask_utils.decode({"size": entry["segmentation"]["size"],
                                                         "counts": entry["segmentation"]["counts"].encode()}),
                                      (reader.label(0) == class_id).astype(np.uint8))
    from pycocotools.coco import COCO  # the annotation tool's side: the results load against its own file

    with contextlib.redirect_stdout(io.StringIO()):
        loaded = COCO(str(files["val"])).loadRes(document["annotations"])
    assert len(loaded.getAnnIds()) == len(document["annotations"])
    split.rename(tmp_path / "moved.zarr")  # without its split, the export still works, with image names
    again = cli("export", "--predictions", predictions.path, "--format", "coco", "--out", tmp_path / "q.json")
    assert again.code == 0 and "image_id holds image names" in again.err
    assert {e["image_id"] for e in json.loads((tmp_path / "q.json").read_text())["annotations"]} <= set(val_ids)


def test_coco_val_without_novel_masks_is_base_coverage(datasets: dict[str, Path], tmp_path: Path) -> None:
    """A val file with masks of the base classes only (no tag rows): the split says so."""
    files = to_coco(datasets["full"], tmp_path / "coco", NOVEL, val_novel_masks=False)
    tags = write_tags(tmp_path / "tags.csv", tags_of(datasets["full"], NOVEL), "list")
    split = run_split(dataset="coco-json", images=files["images"], annotations=files["train"],
                      val_annotations=files["val"], tags=tags, out=tmp_path / "s.zarr", workers=1)
    assert split.manifest.label_coverage == {"train": "base", "val": "base"}


# ---------------------------------------------------------------- validation with or without masks


def test_eval_scores_the_base_classes_where_val_masks_hold_only_them(datasets: dict[str, Path], tmp_path: Path,
                                                                       cli) -> None:  # noqa: ANN001
    files = to_coco(datasets["full"], tmp_path / "coco", NOVEL, val_novel_masks=False)
    tags = write_tags(tmp_path / "tags.csv", tags_of(datasets["full"], NOVEL), "list")
    split = run_split(dataset="coco-json", images=files["images"], annotations=files["train"],
                      val_annotations=files["val"], tags=tags, out=tmp_path / "s.zarr", workers=1)
    model = run_train(split=split.path, out=tmp_path / "m.zarr", iters=1, batch_size=2, device="cpu", workers=0).path
    predictions = run_infer(model=model, split=split.path, out=tmp_path / "p.zarr", device="cpu").path
    result = cli("eval", "--predictions", predictions, "--split", split.path, "--out", tmp_path / "e.zarr", "--json")
    assert result.code == 0, result.err
    assert "warning: novel classes not scored: the val masks hold the base classes only" in result.err
    assert "novel labels: tags" in result.err and str(tags.absolute()) in result.err
    report = json.loads(result.out)
    assert report["novel_miou"] is None and report["hiou"] is None and report["novel"] is None
    for row in report["per_class"]:
        assert (row["iou"] is None) == (row["split_role"] == "novel" or row["gt_pixels"] + row["pred_pixels"] == 0)
    # the base classes' IoUs, by hand: novel predictions on their pixels count against them
    reader, truth = PredictionsArtifact(predictions), SplitArtifact(split.path)
    pairs = [(reader.label(i), truth.label("val", i)) for i in range(reader.count())]
    checked = 0
    for c in split.manifest.base_classes:
        tp = sum(int(((pred == c) & (gt == c)).sum()) for pred, gt in pairs)
        fp = sum(int(((pred == c) & (gt != c) & (gt != split.manifest.ignore_index)).sum()) for pred, gt in pairs)
        fn = sum(int(((pred != c) & (gt == c)).sum()) for pred, gt in pairs)
        if tp + fp + fn:
            assert report["per_class"][c]["iou"] == pytest.approx(100 * tp / (tp + fp + fn), abs=5e-4)  # 3 places
            checked += 1
    assert checked >= 2


def test_val_without_masks_is_predicted_and_exported_but_not_scored(datasets: dict[str, Path], tmp_path: Path,
                                                                     cli) -> None:  # noqa: ANN001
    import shutil

    own = to_base_masks(datasets["full"], tmp_path / "own", NOVEL)
    shutil.rmtree(own / "labels" / "val")
    tags = write_tags(tmp_path / "tags.csv", tags_of(datasets["full"], NOVEL), "list")
    split = run_split(dataset="folder", root=own, tags=tags, out=tmp_path / "s.zarr", workers=1).path
    model = run_train(split=split, out=tmp_path / "m.zarr", iters=1, batch_size=2, device="cpu", workers=0).path
    predictions = run_infer(model=model, split=split, out=tmp_path / "p.zarr", device="cpu").path
    assert cli("viz", "--predictions", predictions, "--split", split, "--out", tmp_path / "viz").code == 0
    assert len(list((tmp_path / "viz").glob("*.png"))) == 2
    assert cli("export", "--predictions", predictions, "--format", "png", "--out", tmp_path / "png").code == 0
    assert sorted(p.name for p in (tmp_path / "png").glob("*.png")) == ["img000.png", "img001.png"]
    refused = cli("eval", "--predictions", predictions, "--split", split, "--out", tmp_path / "e.zarr")
    assert refused.code == 2 and "nothing to score" in refused.err and len(refused.err.strip().splitlines()) == 1
    assert not (tmp_path / "e.zarr").exists()


def test_the_chain_on_coco_masks_and_tags_ends_in_exported_predictions(datasets: dict[str, Path],
                                                                       tmp_path: Path, cli) -> None:  # noqa: ANN001
    """Done-when, small: base classes as COCO JSON, novel as tags, val without novel masks; the whole
    pipeline, then predictions exported with the file's own category ids."""
    files = to_coco(datasets["full"], tmp_path / "coco", NOVEL, val_novel_masks=False)
    tags = write_tags(tmp_path / "tags.json", tags_of(datasets["full"], NOVEL), "json")
    result = cli("pipeline", "--workdir", tmp_path / "run", "--dataset", "coco-json", "--images", files["images"],
                 "--annotations", files["train"], "--val-annotations", files["val"], "--tags", tags,
                 "--iters", "2", "--batch-size", "2", "--device", "cpu", "--json")
    assert result.code == 0, result.err
    table = json.loads(result.out)
    for stage in ("one_stage", "retrained"):
        assert table[stage]["novel_miou"] is None and table[stage]["base_miou"] is not None
    assert table["pseudo_label_novel_miou"] is None  # no full train labels to judge pseudo labels against
    assert result.err.count("warning: novel classes not scored: the val masks hold the base classes only") == 1
    out = tmp_path / "predicted.json"
    assert cli("export", "--predictions", tmp_path / "run" / "model-retrained.pred-val.zarr", "--format", "coco",
               "--out", out).code == 0
    document = json.loads(out.read_text())
    assert {c["id"] for c in document["categories"]} == {category_id(c) for c in range(6)}
    assert {a["image_id"] for a in document["annotations"]} == {1, 2}  # val.json's image ids


def test_held_out_training_images_keep_their_tags(datasets: dict[str, Path], tmp_path: Path) -> None:
    tags = write_tags(tmp_path / "tags.csv", tags_of(datasets["full"], NOVEL), "list")
    split = run_split(dataset="folder", root=datasets["own"], tags=tags, holdout=1, out=tmp_path / "s.zarr", workers=1)
    assert split.manifest.label_coverage == {"train": "base", "val": "full", "holdout": "base"}
    full = SplitArtifact(run_split(dataset="folder", root=datasets["full"], novel_classes=",".join(NOVEL), holdout=1,
                                   out=tmp_path / "b.zarr", workers=1).path)
    np.testing.assert_array_equal(SplitArtifact(split.path).image_labels("holdout"), full.image_labels("holdout"))
