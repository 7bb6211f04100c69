"""Bad inputs of the own-data route (base masks + tags): one line each, exit 2, nothing written.

Machinery and the table they feed: ``refusals.py`` and ``docs/bad_inputs.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_folder_dataset
from own_data import category_id, tags_of, to_base_masks, to_coco, write_tags
from refusals import Refusals, split_args

NOVEL = ["car", "person"]


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> dict[str, Path]:  # noqa: ANN001
    base = tmp_path_factory.mktemp("own-bad")
    full = make_folder_dataset(base / "full")
    return {"base": base, "full": full, "own": to_base_masks(full, base / "own", NOVEL)}


@pytest.fixture
def refusals(cli, own, tmp_path: Path) -> Refusals:  # noqa: ANN001
    return Refusals(cli, [own["base"], tmp_path], {str(own["base"]): "DATA", str(tmp_path): "TMP"})


def tagged(own: dict[str, Path], tmp_path: Path, text: str, name: str = "tags.csv") -> list:
    path = tmp_path / name
    path.write_text(text)
    return split_args(own["own"], tmp_path / "s.zarr", "--tags", path)


def good_rows(own: dict[str, Path]) -> list[str]:
    return [f"{image},{';'.join(names)}" for image, names in tags_of(own["full"], NOVEL).items()]


def test_tag_naming_an_unknown_class(refusals: Refusals, own: dict[str, Path], tmp_path: Path) -> None:
    rows = good_rows(own)
    rows[0] += ";cars"
    refusals.check("tags-unknown-class", "a tag names a class the dataset does not list",
                   tagged(own, tmp_path, "image,labels\n" + "\n".join(rows)), "unknown class 'cars'", "car")


def test_tag_row_for_a_missing_image(refusals: Refusals, own: dict[str, Path], tmp_path: Path) -> None:
    rows = good_rows(own) + ["train/img999.png,car"]
    refusals.check("tags-missing-image", "a tag row names an image the dataset does not have",
                   tagged(own, tmp_path, "image,labels\n" + "\n".join(rows)), "img999", "no such image")


def test_image_listed_twice(refusals: Refusals, own: dict[str, Path], tmp_path: Path) -> None:
    rows = good_rows(own)
    refusals.check("tags-image-twice", "an image has two rows (`image,labels` form)",
                   tagged(own, tmp_path, "image,labels\n" + "\n".join(rows + rows[:1])), "listed twice")


def test_image_listed_twice_in_json(refusals: Refusals, own: dict[str, Path], tmp_path: Path) -> None:
    entries = [f'"{image}": {list(names)}'.replace("'", '"') for image, names in tags_of(own["full"], NOVEL).items()]
    refusals.check("tags-image-twice-json", "an image has two entries in a JSON tag file",
                   tagged(own, tmp_path, "{" + ", ".join(entries + entries[:1]) + "}", "tags.json"), "listed twice")


def test_empty_tag_file(refusals: Refusals, own: dict[str, Path], tmp_path: Path) -> None:
    refusals.check("tags-empty", "an empty tag file", tagged(own, tmp_path, "\n"), "empty")


def test_csv_header_not_understood(refusals: Refusals, own: dict[str, Path], tmp_path: Path) -> None:
    refusals.check("tags-bad-header", "a tag CSV whose header is not `image,labels` or `image,label`",
                   tagged(own, tmp_path, "file,classes\n" + "\n".join(good_rows(own))), "header", "image,labels")


def test_training_image_without_a_row(refusals: Refusals, own: dict[str, Path], tmp_path: Path) -> None:
    refusals.check("tags-image-without-row", "a training image has no tag row (a tag list must be complete)",
                   tagged(own, tmp_path, "image,labels\n" + "\n".join(good_rows(own)[1:])),
                   "img000", "has no row", "img000,")


def test_tagged_class_with_masks(refusals: Refusals, own: dict[str, Path], tmp_path: Path) -> None:
    path = write_tags(tmp_path / "tags.csv", tags_of(own["full"], NOVEL), "list")
    refusals.check("tags-class-also-masked", "a tagged (novel) class has pixels in a training mask",
                   split_args(own["full"], tmp_path / "s.zarr", "--tags", path), "never both")


def test_tags_with_another_class_choice(refusals: Refusals, own: dict[str, Path], tmp_path: Path) -> None:
    path = write_tags(tmp_path / "tags.csv", tags_of(own["full"], NOVEL), "list")
    refusals.check("tags-and-novel-classes", "`--tags` with `--novel-classes`",
                   split_args(own["own"], tmp_path / "s.zarr", "--tags", path, "--novel-classes", "car"),
                   "pass only one")


def test_tags_for_a_dataset_with_full_masks(refusals: Refusals, tmp_path: Path) -> None:
    (tmp_path / "tags.csv").write_text("image,labels\na,car\n")
    refusals.check("tags-wrong-dataset", "`--tags` with a dataset whose masks hold every class (ADE20K)",
                   ["split", "--dataset", "ade20k", "--root", tmp_path, "--out", tmp_path / "s.zarr",
                    "--tags", tmp_path / "tags.csv"], "tags go with")


# ---------------------------------------------------------------- COCO JSON masks


@pytest.fixture(scope="module")
def coco(own: dict[str, Path]) -> dict[str, Path]:
    files = to_coco(own["full"], own["base"] / "coco", NOVEL)
    files["tags"] = write_tags(own["base"] / "coco-tags.csv", tags_of(own["full"], NOVEL), "list")
    return files


def coco_args(coco: dict[str, Path], out: Path, **change: Path) -> list:
    files = {**coco, **change}
    return ["split", "--dataset", "coco-json", "--images", files["images"], "--annotations", files["train"],
            "--val-annotations", files["val"], "--tags", files["tags"], "--out", out, "--workers", "1"]


def test_coco_file_that_does_not_parse(refusals: Refusals, coco: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "train.json"
    broken.write_text(coco["train"].read_text()[:-20])
    refusals.check("coco-does-not-parse", "a COCO annotation file that is not valid JSON",
                   coco_args(coco, tmp_path / "s.zarr", train=broken), "does not parse as JSON")


def test_coco_polygon_outside_its_image(refusals: Refusals, coco: dict[str, Path], tmp_path: Path) -> None:
    document = json.loads(coco["train"].read_text())
    first = document["images"][0]
    document["annotations"].append({"id": 999, "image_id": first["id"], "category_id": category_id(1), "iscrowd": 0,
                                    "segmentation": [[0, 0, first["width"] + 5, 0, first["width"] + 5, 4, 0, 4]]})
    edited = tmp_path / "train.json"
    edited.write_text(json.dumps(document))
    refusals.check("coco-polygon-outside", "a COCO polygon reaching outside its image",
                   coco_args(coco, tmp_path / "s.zarr", train=edited), "annotation 999", "outside its")


def test_coco_category_with_masks_and_tags(refusals: Refusals, coco: dict[str, Path], tmp_path: Path) -> None:
    tags = tags_of(coco["images"].parent.parent / "full", NOVEL)
    image = next(iter(tags))
    tags[image] = [*tags[image], "road"]  # road has masks in train.json
    path = write_tags(tmp_path / "tags.csv", tags, "list")
    refusals.check("coco-category-masks-and-tags", "a COCO category that has masks is also tagged",
                   coco_args(coco, tmp_path / "s.zarr", tags=path), "'road'", "never both")


def test_coco_without_annotations(refusals: Refusals, coco: dict[str, Path], tmp_path: Path) -> None:
    refusals.check("coco-needs-annotations", "`--dataset coco-json` without `--annotations`",
                   ["split", "--dataset", "coco-json", "--images", coco["images"], "--out", tmp_path / "s.zarr"],
                   "--annotations")
