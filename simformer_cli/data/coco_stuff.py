"""COCO-Stuff-10K (171 classes) reader.

``root`` is a datasets folder holding ``coco/coco_stuff_10k/`` (detectron2 style), or
``coco_stuff_10k/``, or the dataset folder itself. Two layouts are recognised; the converted one is
preferred when both are present (it is what SimFormer trains on, and it needs no JSON parsing):

``maskformer-detectron2``  (MaskFormer's ``datasets/prepare_coco_stuff_10k_v1.0_sem_seg.py`` output)
    ``images_detectron2/{train,test}/*.jpg`` + ``annotations_detectron2/{train,test}/*.png``;
    labels hold the contiguous ids 0..170 and 255 = ignore.
``cocostuff-10k-v1.1-json``  (the official release, nightrome/cocostuff10k)
    ``images/*.jpg`` and ``imageLists/{train,test}.txt`` from ``cocostuff-10k-v1.1.zip``, plus the
    separately downloaded ``cocostuff-10k-v1.1.json`` (COCO-style: ``images`` with id/file_name/
    height/width, ``annotations`` with category_id and a polygon, uncompressed or compressed RLE
    ``segmentation``). It is looked for in the dataset folder, ``annotations/`` and
    ``annotations-json/``. Thing categories use COCO ids (1..90, polygons copied from COCO 2014),
    stuff categories 92..182 (one compressed RLE per stuff class and image); they map to the same
    contiguous 0..170 as the converted PNGs (:mod:`simformer_cli.data.class_names`).
    The README once described the JSON as stuff-only; the final conversion script
    (``dataset/code/conversion/convertAnnotationsJSON.py``, ``stuffOnly = False``) copies the COCO
    2014 thing annotations in. With a stuff-only JSON, thing pixels would come out as ignore.

``train`` -> subset ``train``, ``test`` -> subset ``val`` (1000 images).

Label maps from the JSON (:class:`CocoJsonSample`), deterministic overlap rule, painted in this order
so that later layers win:

1. stuff annotations (categories 92..182; also 0 "unlabelled" and 183 "other", which become ignore),
2. crowd thing annotations (``iscrowd=1``, categories 1..91) -> ignore, as COCO-Stuff's own
   ``cocoSegmentationToSegmentationMap`` leaves crowd regions out,
3. non-crowd thing annotations,

and within a layer the larger mask first, so smaller regions lying on larger ones stay visible;
equal areas keep the order of the JSON. Pixels no annotation covers are ignore.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from simformer_cli.artifacts.image_files import QUARTER_TURNS, decode_image_oriented
from simformer_cli.settings.labels import ignore_index_for
from simformer_cli.data.ade20k import pair_images_with_labels
from simformer_cli.data.class_names import COCO_STUFF_171_CLASSES, coco_stuff_raw_lut
from simformer_cli.data.source import (
    INVALID,
    DecodedSample,
    RawDataset,
    apply_lut,
    cached_json,
    identity_lut,
    read_bytes,
)
from simformer_cli.errors import DataError, UserError

DATASET_DIRS = ("coco/coco_stuff_10k", "coco_stuff_10k", "")
JSON_NAME = "cocostuff-10k-v1.1.json"
JSON_DIRS = ("", "annotations", "annotations-json")
CONVERTED_DIRS = (
    "images_detectron2/train",
    "images_detectron2/test",
    "annotations_detectron2/train",
    "annotations_detectron2/test",
)
SUBSET_DIRS = {"train": "train", "val": "test"}
_THING_RAW_IDS = range(1, 92)
_HOW_TO_FIX = "pass --root (or set SIMFORMER_DATASETS) to the folder that holds coco/coco_stuff_10k/"


# --------------------------------------------------------------------------------------------
# The JSON, once per process


@dataclass(frozen=True)
class _JsonIndex:
    sizes: dict[int, tuple[int, int]]  # image id -> (height, width) as the JSON says
    ids_by_stem: dict[str, int]  # file stem -> image id
    annotations: dict[int, tuple[dict, ...]]  # image id -> its annotations, in JSON order


_json_stamps: dict[str, tuple[int, int]] = {}


def _json_index(path: str) -> _JsonIndex:
    """The parsed JSON's index, once per process and per version of the file (size, mtime)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise DataError(path, f"cannot be read ({exc.strerror or exc})", f"download {JSON_NAME} again") from None
    stamp = (info.st_size, info.st_mtime_ns)
    if _json_stamps.setdefault(path, stamp) != stamp:  # the file changed since it was parsed
        _json_stamps[path] = stamp
        cached_json.cache_clear()  # keyed by path only: drop the stale parse (others re-parse on demand)
        _json_index_cached.cache_clear()
    return _json_index_cached(path)


@lru_cache(maxsize=2)
def _json_index_cached(path: str) -> _JsonIndex:
    import json

    try:
        data = cached_json(path)
    except FileNotFoundError:
        raise DataError(path, "file is missing", f"download {JSON_NAME} again") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"not a readable JSON file ({exc})", f"download {JSON_NAME} again") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
        data.get("annotations"), list
    ):
        raise DataError(path, "not a COCO-style annotation file (needs 'images' and 'annotations' lists)")
    sizes: dict[int, tuple[int, int]] = {}
    ids_by_stem: dict[str, int] = {}
    for entry in data["images"]:
        try:
            image_id, name = int(entry["id"]), str(entry["file_name"])
            size = (int(entry["height"]), int(entry["width"]))
        except (KeyError, TypeError, ValueError):
            problem = f"image entry {str(entry)[:80]} lacks an integer id, height, width or a file_name"
            raise DataError(path, problem) from None
        sizes[image_id] = size
        ids_by_stem[Path(name).stem] = image_id
    grouped: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise DataError(path, f"annotation {str(ann)[:80]} has no image_id")
        grouped.setdefault(ann["image_id"], []).append(ann)
    return _JsonIndex(sizes, ids_by_stem, {k: tuple(v) for k, v in grouped.items()})


# --------------------------------------------------------------------------------------------
# Masks from COCO segmentations


def _rle_string_counts(counts: str | bytes) -> list[int]:
    """Run lengths of a compressed COCO RLE string (the format of pycocotools' ``rleToString``)."""
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    runs: list[int] = []
    pos = 0
    while pos < len(data):
        value = shift = 0
        while True:
            if pos >= len(data):
                raise ValueError("truncated RLE string")
            chunk = data[pos] - 48
            if not 0 <= chunk < 64:
                raise ValueError("RLE string has a character outside its alphabet")
            pos += 1
            value |= (chunk & 0x1F) << shift
            shift += 5
            if not chunk & 0x20:
                if chunk & 0x10:
                    value -= 1 << shift  # sign-extend
                break
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """Boolean (height, width) mask of one annotation; raise ValueError when it is malformed.

    pycocotools decodes run lengths without checking that they cover the image exactly (short runs
    leave uninitialised memory, long ones overflow), so the runs are checked here first.
    """
    from pycocotools import mask as mask_utils

    seg = ann.get("segmentation")
    if isinstance(seg, list):  # polygons [[x1, y1, x2, y2, ...], ...]
        polygons = []
        for poly in seg:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                raise ValueError("a polygon needs an even number (at least 6) of coordinates")
            polygons.append([float(v) for v in poly])
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
        size = [int(v) for v in seg["size"]]
        if size != [height, width]:
            raise ValueError(f"RLE size {size} (height, width) differs from the image's {[height, width]}")
        counts = seg["counts"]
        if isinstance(counts, list):  # uncompressed
            runs = [int(c) for c in counts]
        elif isinstance(counts, (str, bytes)):
            runs = _rle_string_counts(counts)
        else:
            raise ValueError("RLE counts must be a list or a string")
        if any(r < 0 for r in runs) or sum(runs) != height * width:
            raise ValueError(f"RLE runs cover {sum(runs)} pixels, not {height}x{width}")
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects({"size": size, "counts": runs}, height, width)
        else:
            rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise ValueError("segmentation is neither a polygon list nor an RLE")
    with warnings.catch_warnings():  # pycocotools' Cython decode trips a numpy 2 copy-keyword warning
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


@dataclass(frozen=True)
class CocoJsonSample:
    """An image of the official COCO-Stuff-10K release, labelled by the COCO-style JSON.

    ``image`` and ``annotations`` (the JSON) are paths relative to the dataset root; the label map is
    built at decode time from the image's annotations (overlap rule in the module docstring).
    """

    name: str
    image: str
    annotations: str
    image_id: int

    def files(self) -> tuple[str, ...]:
        return (self.image, self.annotations)

    def decode(self, root: Path, lut: np.ndarray, ignore_index: int) -> DecodedSample:
        image_path = Path(root) / self.image
        image_bytes = read_bytes(image_path)
        image, orientation = decode_image_oriented(image_path, image_bytes)
        json_path = Path(root) / self.annotations
        index = _json_index(str(json_path))
        if self.image_id not in index.sizes:
            raise DataError(json_path, f"has no image with id {self.image_id} ({self.name})", "use the matching JSON")
        height, width = index.sizes[self.image_id]
        if image.shape[:2] != (height, width):
            if orientation in QUARTER_TURNS and image.shape[1::-1] == (height, width):
                raise DataError(
                    image_path,
                    f"image is {image.shape[1]}x{image.shape[0]} as displayed (its EXIF orientation {orientation} "
                    f"turns the stored {width}x{height} pixels) but {json_path.name} says {width}x{height}",
                    "its masks fit the stored pixels: remove the image's EXIF orientation tag",
                )
            raise DataError(
                image_path,
                f"image is {image.shape[1]}x{image.shape[0]} but {json_path.name} says {width}x{height}",
                "re-download the image",
            )
        raw = self._raw_label(json_path, index.annotations.get(self.image_id, ()), height, width, lut)
        dtype = np.dtype(np.uint16 if ignore_index > 255 else np.uint8)
        label = apply_lut(json_path, raw, lut, ignore_index, dtype)
        return DecodedSample(self.name, image, label, image_bytes)

    def _raw_label(
        self, json_path: Path, anns: tuple[dict, ...], height: int, width: int, lut: np.ndarray
    ) -> np.ndarray:
        """Raw category ids (0 = nothing) painted layer by layer; see the module docstring."""
        layers: list[tuple[tuple[int, int, int], int, np.ndarray]] = []
        for position, ann in enumerate(anns):
            where = f"annotation {ann.get('id', position)} of {self.name}"
            category = ann.get("category_id")
            if isinstance(category, bool) or not isinstance(category, int):
                raise DataError(json_path, f"{where} has category_id {category!r}, not an integer")
            if not 0 <= category < len(lut) or lut[category] == INVALID:
                raise DataError(
                    json_path,
                    f"{where} has category_id {category}, which is no COCO-Stuff-171 category",
                    "use the COCO-Stuff v1.1 JSON (things 1..90, stuff 92..182)",
                )
            try:
                mask = annotation_mask(ann, height, width)
            except (ValueError, TypeError) as exc:
                raise DataError(json_path, f"{where} has an unusable segmentation ({exc})") from None
            is_thing = category in _THING_RAW_IDS
            crowd = bool(ann.get("iscrowd", 0)) and is_thing
            layer = 0 if not is_thing else (1 if crowd else 2)
            value = 0 if crowd else category  # raw 0 maps to ignore
            layers.append(((layer, -int(mask.sum()), position), value, mask))
        raw = np.zeros((height, width), dtype=np.int32)
        for _, value, mask in sorted(layers, key=lambda item: item[0]):
            raw[mask] = value
        return raw


# --------------------------------------------------------------------------------------------
# Listing


def _find_json(folder: Path) -> Path | None:
    for sub in JSON_DIRS:
        candidate = folder / sub / JSON_NAME if sub else folder / JSON_NAME
        if candidate.is_file():
            return candidate
    return None


def _read_list(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot be read ({exc})") from None
    names = []
    for line in text.splitlines():
        name = line.strip()
        if name:
            names.append(name[: -len(".jpg")] if name.lower().endswith(".jpg") else name)
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(path, f"lists {name!r} twice")
        seen.add(name)
    return names


def _list_release(folder: Path, json_path: Path) -> dict[str, tuple[CocoJsonSample, ...]]:
    index = _json_index(str(json_path))
    json_rel = json_path.relative_to(folder).as_posix()
    subsets: dict[str, tuple[CocoJsonSample, ...]] = {}
    seen: dict[str, str] = {}
    for subset, list_name in SUBSET_DIRS.items():
        list_path = folder / "imageLists" / f"{list_name}.txt"
        samples = []
        for name in _read_list(list_path):
            if name in seen:
                raise DataError(list_path, f"lists {name!r}, which is already in the {seen[name]} subset")
            seen[name] = subset
            image_path = folder / "images" / f"{name}.jpg"
            if not image_path.is_file():
                raise DataError(image_path, f"is missing but {list_path.name} lists it", "restore the image")
            if name not in index.ids_by_stem:
                problem = f"has no label: {json_path.name} has no image entry for it"
                raise DataError(image_path, problem, "use the JSON that belongs to these images")
            samples.append(
                CocoJsonSample(
                    name=name,
                    image=image_path.relative_to(folder).as_posix(),
                    annotations=json_rel,
                    image_id=index.ids_by_stem[name],
                )
            )
        if not samples:
            raise UserError(f"{list_path}: lists no images for the {subset} subset; is the download complete?")
        subsets[subset] = tuple(samples)
    return subsets


def load_coco_stuff_10k(root: Path) -> RawDataset:
    """List COCO-Stuff-10K from ``root`` (a datasets folder, ``coco_stuff_10k`` or the dataset itself)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: datasets folder not found; {_HOW_TO_FIX}")
    candidates = [root / sub if sub else root for sub in DATASET_DIRS]
    num_classes = len(COCO_STUFF_171_CLASSES)
    ignore = ignore_index_for(num_classes)
    for folder in candidates:
        if all((folder / rel).is_dir() for rel in CONVERTED_DIRS):
            subsets = {
                subset: pair_images_with_labels(
                    folder, folder / "images_detectron2" / sub, folder / "annotations_detectron2" / sub, subset
                )
                for subset, sub in SUBSET_DIRS.items()
            }
            return RawDataset("coco-stuff-10k", folder, "maskformer-detectron2", COCO_STUFF_171_CLASSES,
                              identity_lut(num_classes, ignore), subsets)  # fmt: skip
        json_path = _find_json(folder)
        release_parts = [(folder / "images").is_dir(), (folder / "imageLists" / "train.txt").is_file(),
                         (folder / "imageLists" / "test.txt").is_file()]  # fmt: skip
        if json_path is not None and all(release_parts):
            subsets = _list_release(folder, json_path)
            return RawDataset("coco-stuff-10k", folder, "cocostuff-10k-v1.1-json", COCO_STUFF_171_CLASSES,
                              coco_stuff_raw_lut(ignore), subsets)  # fmt: skip
    _raise_not_found(root, candidates)
    raise AssertionError("unreachable")


def _raise_not_found(root: Path, candidates: list[Path]) -> None:
    """One line naming the closest partial layout and what it lacks, or what was expected."""
    best: tuple[tuple[int, int, int], Path, str, list[str]] | None = None
    for ci, folder in enumerate(candidates):
        converted = {rel + "/": (folder / rel).is_dir() for rel in CONVERTED_DIRS}
        release = {
            "images/": (folder / "images").is_dir(),
            "imageLists/train.txt": (folder / "imageLists" / "train.txt").is_file(),
            "imageLists/test.txt": (folder / "imageLists" / "test.txt").is_file(),
            f"{JSON_NAME} (download it from the COCO-Stuff-10K page into {folder})": _find_json(folder) is not None,
        }
        layouts = (("maskformer-detectron2", converted), ("cocostuff-10k-v1.1-json", release))
        for li, (layout, parts) in enumerate(layouts):
            key = (sum(parts.values()), -ci, li)
            if key[0] >= 2 and (best is None or key > best[0]):  # a lone images/ proves nothing
                best = (key, folder, layout, [name for name, ok in parts.items() if not ok])
    if best is not None:
        _, folder, layout, missing = best
        raise UserError(f"{folder}: looks like the COCO-Stuff-10K {layout} layout but lacks {', '.join(missing)}")
    raise UserError(
        f"{root}: no COCO-Stuff-10K found; expected coco/coco_stuff_10k/ with images_detectron2/{{train,test}}/ + "
        f"annotations_detectron2/{{train,test}}/ (MaskFormer's converted layout) or images/, "
        f"imageLists/{{train,test}}.txt and {JSON_NAME} (the official v1.1 release); {_HOW_TO_FIX}"
    )
