"""ADE20K and COCO-Stuff-10K readers on tiny fake datasets in every supported layout,
the class-name tables and SimFormer's official class splits."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from simformer_cli.data.ade20k import load_ade20k
from simformer_cli.data.class_names import (
    ADE20K_CLASSES,
    COCO_STUFF_171_CLASSES,
    COCO_STUFF_RAW_IDS,
    COCO_STUFF_RAW_TO_CONTIGUOUS,
    coco_stuff_raw_lut,
)
from simformer_cli.data.coco_stuff import CocoJsonSample, load_coco_stuff_10k
from simformer_cli.data.official_splits import (
    COCO_STUFF_RANDP,
    official_novel_classes,
    official_split_numbers,
)
from simformer_cli.errors import DataError, UserError

H, W = 6, 8


def _jpg(path: Path, height: int = H, width: int = W) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path, quality=95)


def _png(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)


def _decode(ds, subset: str, index: int = 0):
    return ds.subsets[subset][index].decode(ds.root, ds.lut, ds.ignore_index)


# ------------------------------------------------------------------------------------------
# ADE20K

RELEASE_LABEL = np.array([[0, 1, 150, 2, 3, 0, 0, 0]] * H)
CONVERTED_LABEL = np.array([[255, 0, 149, 1, 2, 255, 255, 255]] * H)

ADE_LAYOUTS = {  # layout -> (images dir, labels dir, train sub, val sub, label values)
    "release": ("images", "annotations", "training", "validation", RELEASE_LABEL),
    "maskformer-detectron2": ("images", "annotations_detectron2", "training", "validation", CONVERTED_LABEL),
    "simformer-detectron2": ("images_detectron2", "annotations_detectron2", "train", "test", CONVERTED_LABEL),
}


def make_ade(datasets: Path, layout: str, n_train: int = 2, n_val: int = 1) -> Path:
    images, labels, train, val, values = ADE_LAYOUTS[layout]
    folder = datasets / "ADEChallengeData2016"
    for sub, prefix, n in ((train, "ADE_train", n_train), (val, "ADE_val", n_val)):
        for i in range(1, n + 1):
            stem = f"{prefix}_{i:08d}"
            _jpg(folder / images / sub / f"{stem}.jpg")
            _png(folder / labels / sub / f"{stem}.png", values)
    return folder


@pytest.mark.parametrize("layout", list(ADE_LAYOUTS))
def test_ade20k_layouts_subsets_and_mapping(tmp_path: Path, layout: str) -> None:
    folder = make_ade(tmp_path, layout)
    ds = load_ade20k(tmp_path)
    assert ds.layout == layout and ds.name == "ade20k"
    assert ds.root == folder
    assert ds.num_classes == 150 and ds.class_names == ADE20K_CLASSES and ds.ignore_index == 255
    assert set(ds.subsets) == {"train", "val"}
    assert [s.name for s in ds.subsets["train"]] == ["ADE_train_00000001", "ADE_train_00000002"]
    assert [s.name for s in ds.subsets["val"]] == ["ADE_val_00000001"]
    for sample in ds.subsets["train"] + ds.subsets["val"]:
        image, label = sample.files()
        assert Path(image).stem == Path(label).stem == sample.name
        assert (folder / image).is_file() and (folder / label).is_file()
    decoded = _decode(ds, "train")
    assert decoded.image.shape == (H, W, 3) and decoded.label.dtype == np.uint8
    # raw 0 -> 255, 1 -> 0, 150 -> 149 (release); converted values pass through
    np.testing.assert_array_equal(decoded.label[0], [255, 0, 149, 1, 2, 255, 255, 255])
    assert pickle.loads(pickle.dumps(ds.subsets["val"][0])) == ds.subsets["val"][0]


def test_ade20k_root_may_be_the_dataset_folder(tmp_path: Path) -> None:
    folder = make_ade(tmp_path, "release")
    ds = load_ade20k(folder)
    assert ds.root == folder and ds.layout == "release"


def test_ade20k_prefers_converted_layouts(tmp_path: Path) -> None:
    make_ade(tmp_path, "release")
    make_ade(tmp_path, "maskformer-detectron2")
    assert load_ade20k(tmp_path).layout == "maskformer-detectron2"
    make_ade(tmp_path, "simformer-detectron2")
    assert load_ade20k(tmp_path).layout == "simformer-detectron2"


@pytest.mark.parametrize(("layout", "bad_value"), [("release", 151), ("maskformer-detectron2", 150)])
def test_ade20k_out_of_range_label_values(tmp_path: Path, layout: str, bad_value: int) -> None:
    folder = make_ade(tmp_path, layout)
    _, labels, train, _, values = ADE_LAYOUTS[layout]
    bad = values.copy()
    bad[2, 3] = bad_value
    _png(folder / labels / train / "ADE_train_00000002.png", bad)
    ds = load_ade20k(tmp_path)
    _decode(ds, "train", 0)  # the good one decodes
    with pytest.raises(DataError) as info:
        _decode(ds, "train", 1)
    assert "ADE_train_00000002.png" in str(info.value) and str(bad_value) in str(info.value)


def test_ade20k_missing_root(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        load_ade20k(tmp_path / "nowhere")
    message = str(info.value)
    assert "nowhere" in message and "--root" in message and "SIMFORMER_DATASETS" in message
    assert "\n" not in message


def test_ade20k_unknown_layout(tmp_path: Path) -> None:
    (tmp_path / "ADEChallengeData2016" / "stuff").mkdir(parents=True)
    with pytest.raises(UserError) as info:
        load_ade20k(tmp_path)
    message = str(info.value)
    assert not isinstance(info.value, DataError)
    assert "ADEChallengeData2016" in message and "images/{training,validation}" in message and "--root" in message


def test_ade20k_partial_layout_names_what_is_missing(tmp_path: Path) -> None:
    folder = make_ade(tmp_path, "release")
    for path in sorted((folder / "annotations" / "validation").iterdir()):
        path.unlink()
    (folder / "annotations" / "validation").rmdir()
    with pytest.raises(UserError) as info:
        load_ade20k(tmp_path)
    assert "annotations/validation" in str(info.value) and "release" in str(info.value)


def test_ade20k_image_without_label_and_label_without_image(tmp_path: Path) -> None:
    folder = make_ade(tmp_path, "release")
    _jpg(folder / "images" / "training" / "ADE_train_00000009.jpg")
    with pytest.raises(DataError) as info:
        load_ade20k(tmp_path)
    assert "ADE_train_00000009.jpg" in str(info.value) and "no label" in str(info.value)
    (folder / "images" / "training" / "ADE_train_00000009.jpg").unlink()
    _png(folder / "annotations" / "validation" / "ADE_val_00000007.png", RELEASE_LABEL)
    with pytest.raises(DataError) as info:
        load_ade20k(tmp_path)
    assert "ADE_val_00000007.png" in str(info.value)
    (folder / "annotations" / "validation" / "ADE_val_00000007.png").unlink()
    (folder / "images" / "validation" / "._ADE_val_00000001.jpg").write_bytes(b"macOS resource fork")
    assert len(load_ade20k(tmp_path).subsets["val"]) == 1  # hidden files are skipped


# ------------------------------------------------------------------------------------------
# COCO-Stuff-10K: MaskFormer's converted layout


def make_coco_converted(datasets: Path) -> Path:
    folder = datasets / "coco" / "coco_stuff_10k"
    values = np.array([[0, 79, 80, 170, 255, 3, 3, 3]] * H)
    for sub, stems in (("train", ["COCO_train2014_000000000077", "COCO_train2014_000000000078"]),
                       ("test", ["COCO_train2014_000000000079"])):  # fmt: skip
        for stem in stems:
            _jpg(folder / "images_detectron2" / sub / f"{stem}.jpg")
            _png(folder / "annotations_detectron2" / sub / f"{stem}.png", values)
    return folder


def test_coco_converted_layout(tmp_path: Path) -> None:
    folder = make_coco_converted(tmp_path)
    ds = load_coco_stuff_10k(tmp_path)
    assert ds.layout == "maskformer-detectron2" and ds.root == folder and ds.name == "coco-stuff-10k"
    assert ds.num_classes == 171 and ds.class_names == COCO_STUFF_171_CLASSES and ds.ignore_index == 255
    assert [len(ds.subsets["train"]), len(ds.subsets["val"])] == [2, 1]
    np.testing.assert_array_equal(_decode(ds, "val").label[0], [0, 79, 80, 170, 255, 3, 3, 3])
    assert load_coco_stuff_10k(tmp_path / "coco").layout == "maskformer-detectron2"
    assert load_coco_stuff_10k(folder).root == folder
    bad = np.full((H, W), 171)
    _png(folder / "annotations_detectron2" / "test" / "COCO_train2014_000000000079.png", bad)
    with pytest.raises(DataError) as info:
        _decode(load_coco_stuff_10k(tmp_path), "val")
    assert "COCO_train2014_000000000079.png" in str(info.value) and "171" in str(info.value)


def test_coco_converted_image_without_label(tmp_path: Path) -> None:
    folder = make_coco_converted(tmp_path)
    _jpg(folder / "images_detectron2" / "train" / "COCO_train2014_000000000999.jpg")
    with pytest.raises(DataError) as info:
        load_coco_stuff_10k(tmp_path)
    assert "COCO_train2014_000000000999.jpg" in str(info.value)


# ------------------------------------------------------------------------------------------
# COCO-Stuff-10K: the official v1.1 release (images/, imageLists/, cocostuff-10k-v1.1.json)


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.astype(np.uint8).T.reshape(-1)  # column-major, as COCO stores it
    runs, current, length = [], 0, 0
    for value in flat:
        if value == current:
            length += 1
        else:
            runs.append(length)
            current, length = value, 1
    runs.append(length)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": runs}


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


PERSON_POLYGON = [[0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 0.0, 4.0]]  # a square on the top left


def _person_mask() -> np.ndarray:
    with warnings.catch_warnings():  # pycocotools vs numpy 2 copy-keyword deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(PERSON_POLYGON, H, W))).astype(bool)


def coco_json_annotations(image_id: int) -> list[dict]:
    """One image's annotations: stuff (compressed RLE), things (polygon, uncompressed RLE), a crowd."""
    return [
        # a small toothbrush (raw 90 -> 79) inside the person, listed first: the smaller mask must win
        {"id": 1, "image_id": image_id, "category_id": 90, "iscrowd": 0,
         "segmentation": _uncompressed_rle(_box(1, 2, 1, 3))},
        # person (raw 1 -> 0) as a polygon, overlapping the banner
        {"id": 2, "image_id": image_id, "category_id": 1, "iscrowd": 0, "segmentation": PERSON_POLYGON},
        # stuff: banner (raw 92 -> 80) on the left half, wood (raw 182 -> 170) bottom right
        {"id": 3, "image_id": image_id, "category_id": 92, "iscrowd": 1, "segmentation": _rle(_box(0, H, 0, 4))},
        {"id": 4, "image_id": image_id, "category_id": 182, "iscrowd": 1, "segmentation": _rle(_box(3, H, 5, W))},
        # a crowd of cars (raw 3) over the wood: ignore
        {"id": 5, "image_id": image_id, "category_id": 3, "iscrowd": 1, "segmentation": _rle(_box(4, H, 6, W))},
    ]  # fmt: skip


def expected_coco_label() -> np.ndarray:
    label = np.full((H, W), 255, dtype=np.uint8)
    label[_box(0, H, 0, 4)] = 80
    label[_box(3, H, 5, W)] = 170
    label[_box(4, H, 6, W)] = 255
    label[_person_mask()] = 0
    label[_box(1, 2, 1, 3)] = 79
    return label


STEMS = {"train": [77, 78], "test": [79]}


def make_coco_release(datasets: Path, json_dir: str = "", with_json: bool = True) -> Path:
    folder = datasets / "coco_stuff_10k"
    images, annotations = [], []
    for list_name, ids in STEMS.items():
        lines = []
        for image_id in ids:
            stem = f"COCO_train2014_{image_id:012d}"
            _jpg(folder / "images" / f"{stem}.jpg")
            lines.append(stem)
            images.append({"id": image_id, "file_name": f"{stem}.jpg", "height": H, "width": W})
            annotations += coco_json_annotations(image_id)
        (folder / "imageLists").mkdir(parents=True, exist_ok=True)
        (folder / "imageLists" / f"{list_name}.txt").write_text("\n".join(lines) + "\n")
    (folder / "annotations").mkdir(exist_ok=True)
    (folder / "annotations" / "COCO_train2014_000000000077.mat").write_bytes(b"not read")
    if with_json:
        data = {
            "info": {"version": "1.1"},
            "images": images,
            "categories": [
                {"id": raw, "name": COCO_STUFF_171_CLASSES[cid]} for cid, raw in enumerate(COCO_STUFF_RAW_IDS)
            ],
            "annotations": annotations,
        }
        json_path = folder / json_dir / "cocostuff-10k-v1.1.json"
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(data))
    return folder


def _rewrite_json(folder: Path, edit) -> None:
    path = folder / "cocostuff-10k-v1.1.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_coco_raw_id_mapping() -> None:
    assert len(COCO_STUFF_RAW_IDS) == 171
    assert COCO_STUFF_RAW_TO_CONTIGUOUS[1] == 0 and COCO_STUFF_RAW_TO_CONTIGUOUS[90] == 79
    assert COCO_STUFF_RAW_TO_CONTIGUOUS[92] == 80 and COCO_STUFF_RAW_TO_CONTIGUOUS[182] == 170
    assert COCO_STUFF_RAW_TO_CONTIGUOUS[13] == 11  # stop sign, after the unused 12 (street sign)
    for unused in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91):
        assert unused not in COCO_STUFF_RAW_TO_CONTIGUOUS
    lut = coco_stuff_raw_lut(255)
    assert lut[0] == 255 and lut[183] == 255 and lut[12] == -1 and lut[184] == -1
    assert COCO_STUFF_171_CLASSES[0] == "person" and COCO_STUFF_171_CLASSES[79] == "toothbrush"
    assert COCO_STUFF_171_CLASSES[80] == "banner" and COCO_STUFF_171_CLASSES[170] == "wood"


@pytest.mark.parametrize("json_dir", ["", "annotations", "annotations-json"])
def test_coco_release_json_decoding(tmp_path: Path, json_dir: str) -> None:
    folder = make_coco_release(tmp_path, json_dir)
    ds = load_coco_stuff_10k(tmp_path)
    assert ds.layout == "cocostuff-10k-v1.1-json" and ds.root == folder
    assert ds.num_classes == 171 and ds.ignore_index == 255
    assert [s.name for s in ds.subsets["train"]] == ["COCO_train2014_000000000077", "COCO_train2014_000000000078"]
    assert [s.name for s in ds.subsets["val"]] == ["COCO_train2014_000000000079"]
    sample = ds.subsets["val"][0]
    assert isinstance(sample, CocoJsonSample) and sample.image_id == 79
    json_rel = f"{json_dir}/cocostuff-10k-v1.1.json" if json_dir else "cocostuff-10k-v1.1.json"
    assert sample.files() == ("images/COCO_train2014_000000000079.jpg", json_rel)
    assert pickle.loads(pickle.dumps(sample)) == sample
    decoded = sample.decode(ds.root, ds.lut, ds.ignore_index)
    assert decoded.name == sample.name and decoded.image.shape == (H, W, 3)
    assert decoded.label.dtype == np.uint8
    np.testing.assert_array_equal(decoded.label, expected_coco_label())
    assert {0, 79, 80, 170, 255} == set(np.unique(decoded.label).tolist())
    # decoding again (cached JSON) gives the same
    np.testing.assert_array_equal(_decode(ds, "train", 1).label, expected_coco_label())


def test_coco_release_accepts_dataset_folder_and_prefers_converted(tmp_path: Path) -> None:
    folder = make_coco_release(tmp_path)
    assert load_coco_stuff_10k(folder).layout == "cocostuff-10k-v1.1-json"
    for sub in ("train", "test"):
        _jpg(folder / "images_detectron2" / sub / "a.jpg")
        _png(folder / "annotations_detectron2" / sub / "a.png", np.zeros((H, W)))
    assert load_coco_stuff_10k(tmp_path).layout == "maskformer-detectron2"


def test_coco_release_without_json_says_so(tmp_path: Path) -> None:
    make_coco_release(tmp_path, with_json=False)
    with pytest.raises(UserError) as info:
        load_coco_stuff_10k(tmp_path)
    assert "cocostuff-10k-v1.1.json" in str(info.value) and "coco_stuff_10k" in str(info.value)


def test_coco_missing_root_and_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        load_coco_stuff_10k(tmp_path / "absent")
    assert "absent" in str(info.value) and "--root" in str(info.value)
    (tmp_path / "coco").mkdir()
    with pytest.raises(UserError) as info:
        load_coco_stuff_10k(tmp_path)
    message = str(info.value)
    assert "images_detectron2" in message and "imageLists" in message and "SIMFORMER_DATASETS" in message


def test_coco_release_listed_image_missing_or_without_json_entry(tmp_path: Path) -> None:
    folder = make_coco_release(tmp_path)
    (folder / "images" / "COCO_train2014_000000000078.jpg").unlink()
    with pytest.raises(DataError) as info:
        load_coco_stuff_10k(tmp_path)
    assert "COCO_train2014_000000000078.jpg" in str(info.value)
    _jpg(folder / "images" / "COCO_train2014_000000000078.jpg")
    _rewrite_json(folder, lambda d: d.update(images=[i for i in d["images"] if i["id"] != 78]))
    with pytest.raises(DataError) as info:
        load_coco_stuff_10k(tmp_path)
    assert "COCO_train2014_000000000078.jpg" in str(info.value) and "no label" in str(info.value)


def _edit_annotation(index: int, **changes):
    def edit(data: dict) -> None:
        anns = [a for a in data["annotations"] if a["image_id"] == 79]
        anns[index].update(changes)

    return edit


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (_edit_annotation(1, category_id=12), "category_id 12"),  # street sign: unused id
        (_edit_annotation(1, category_id=200), "category_id 200"),
        (_edit_annotation(2, segmentation={"size": [H, W], "counts": [3, 4]}), "segmentation"),
        (_edit_annotation(2, segmentation={"size": [H + 1, W], "counts": [(H + 1) * W]}), "segmentation"),
        (_edit_annotation(1, segmentation=[[1.0, 2.0, 3.0, 4.0]]), "polygon"),
    ],
)
def test_coco_release_bad_annotations(tmp_path: Path, edit, words: str) -> None:
    folder = make_coco_release(tmp_path)
    _rewrite_json(folder, edit)
    ds = load_coco_stuff_10k(tmp_path)
    with pytest.raises(DataError) as info:
        _decode(ds, "val")
    assert "cocostuff-10k-v1.1.json" in str(info.value) and words in str(info.value)
    _decode(ds, "train")  # other images are fine


def test_coco_release_image_size_differs_from_json(tmp_path: Path) -> None:
    folder = make_coco_release(tmp_path)
    _jpg(folder / "images" / "COCO_train2014_000000000079.jpg", height=H + 2)
    with pytest.raises(DataError) as info:
        _decode(load_coco_stuff_10k(tmp_path), "val")
    assert "COCO_train2014_000000000079.jpg" in str(info.value) and f"{W}x{H}" in str(info.value)


# ------------------------------------------------------------------------------------------
# Official splits and class names

ADE_S1 = [1, 3, 6, 8, 10, 13, 17, 22, 23, 29, 33, 38, 41, 50, 51, 56, 67, 70, 71, 74, 77, 81, 92, 93, 98,
          101, 102, 103, 110, 113, 119, 121, 126, 127, 130, 136, 147, 149]  # fmt: skip
ADE_S1_NAMES = (
    "building, floor, road, window, cabinet, earth, plant, painting, sofa, field, desk, rail, box, refrigerator, "
    "grandstand, pool table, book, countertop, stove, computer, bar, towel, clothes, pole, bottle, stage, van, ship, "
    "stool, falls, ball, step, animal, bicycle, screen, traffic light, glass, flag"
).split(", ")
# The reference's names are SimFormer's own short forms; ours are the first objectInfo150 names.
ADE_SYNONYMS = {"window": "windowpane", "rail": "railing", "clothes": "apparel", "falls": "waterfall"}
COCO_S1 = [3, 6, 10, 11, 18, 19, 26, 27, 31, 34, 37, 38, 40, 41, 50, 53, 55, 59, 61, 68, 76, 82, 85, 90, 92, 94,
           103, 106, 108, 112, 113, 117, 120, 127, 129, 131, 141, 146, 155, 156, 159, 166, 169]  # fmt: skip
COCO_S1_NAMES = (
    "motorcycle, train, fire hydrant, stop sign, sheep, cow, handbag, tie, snowboard, baseball bat, surfboard, "
    "tennis racket, wine glass, cup, broccoli, pizza, cake, bed, toilet, microwave, scissors, branch, bush, "
    "ceiling-other, cloth, clouds, floor-other, floor-wood, fog, grass, gravel, leaves, metal, paper, pillow, "
    "plastic, salad, skyscraper, textile-other, towel, wall-brick, water-other, window-other"
).split(", ")
COCO_S4 = [3, 12, 13, 14, 17, 24, 25, 26, 27, 33, 37, 40, 46, 50, 57, 58, 61, 69, 76, 83, 87, 89, 92, 100, 102,
           106, 109, 110, 112, 113, 114, 121, 128, 133, 134, 137, 144, 149, 151, 161, 162, 164, 170]  # fmt: skip


def test_class_name_tables() -> None:
    assert len(ADE20K_CLASSES) == len(set(ADE20K_CLASSES)) == 150
    assert ADE20K_CLASSES[0] == "wall" and ADE20K_CLASSES[149] == "flag"
    assert len(COCO_STUFF_171_CLASSES) == len(set(COCO_STUFF_171_CLASSES)) == 171


def test_official_splits_verbatim_and_sized() -> None:
    assert list(official_novel_classes("ade20k", 1)) == ADE_S1
    assert official_split_numbers("ade20k") == (1, 2, 3, 4)
    for split in range(1, 5):
        ids = official_novel_classes("ade20k", split)
        assert len(ids) == 38 and list(ids) == sorted(set(ids)) and 0 <= ids[0] and ids[-1] < 150
    assert list(official_novel_classes("coco-stuff-10k", 1)) == COCO_S1
    assert official_split_numbers("coco-stuff-10k") == tuple(range(1, 10))
    assert len(COCO_STUFF_RANDP) == len(set(COCO_STUFF_RANDP)) == 100 and max(COCO_STUFF_RANDP) <= 170
    assert list(official_novel_classes("coco-stuff-10k", 4)) == COCO_S4 == sorted(COCO_STUFF_RANDP[:43])
    sizes = {1: 43, 2: 43, 3: 43, 4: 43, 5: 51, 6: 59, 7: 68, 8: 76, 9: 85}
    for split, size in sizes.items():
        ids = official_novel_classes("coco-stuff-10k", split)
        assert len(ids) == size and list(ids) == sorted(set(ids)) and ids[-1] <= 170
    for smaller, larger in zip(range(4, 9), range(5, 10)):
        inner = official_novel_classes("coco-stuff-10k", smaller)
        outer = official_novel_classes("coco-stuff-10k", larger)
        assert set(inner) < set(outer)
    assert official_novel_classes("COCO_Stuff_10k", 2) == official_novel_classes("coco-stuff-10k", 2)


def test_official_split_class_names_match_the_reference() -> None:
    names = [ADE20K_CLASSES[i] for i in official_novel_classes("ade20k", 1)]
    assert names == [ADE_SYNONYMS.get(n, n) for n in ADE_S1_NAMES]
    assert [COCO_STUFF_171_CLASSES[i] for i in official_novel_classes("coco-stuff-10k", 1)] == COCO_S1_NAMES


@pytest.mark.parametrize(
    ("dataset", "split", "message"),
    [
        ("ade20k", 9, "ADE20K has official splits 1-4; got 9"),
        ("ade20k", 0, "ADE20K has official splits 1-4; got 0"),
        ("coco-stuff-10k", 10, "COCO-Stuff-10K has official splits 1-9; got 10"),
    ],
)
def test_unknown_official_split(dataset: str, split: int, message: str) -> None:
    with pytest.raises(UserError) as info:
        official_novel_classes(dataset, split)
    assert str(info.value) == message


def test_unknown_dataset_for_official_split() -> None:
    with pytest.raises(UserError) as info:
        official_novel_classes("cityscapes", 1)
    assert "cityscapes" in str(info.value) and "ade20k" in str(info.value)
