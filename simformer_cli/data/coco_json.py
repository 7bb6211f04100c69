"""Masks as COCO JSON, as annotation tools export them (``--dataset coco-json``).

``--images DIR`` holds the pictures; ``--annotations train.json`` and ``--val-annotations
val.json`` list the images of each subset (``file_name`` relative to DIR) and their masks:
polygons, uncompressed or compressed RLE, ``iscrowd`` or not, instance or stuff annotations alike.

Classes are the ``categories`` of the training file in increasing ``id``: ids need not be
contiguous (1, 3, 17, ...); they become class 0, 1, 2, ... and the split keeps the original ids
so that ``export --format coco`` writes them back. The val file must list the same categories.
A category without any training annotation may be a novel class named by ``--tags``.

Label maps, painted so that later layers win (overlapping instances):

1. crowd annotations (``iscrowd=1``), which mark a region of the class without outlining each
   instance;
2. every other annotation, the larger mask first, so that a smaller region lying on a larger one
   (a cup on a table) stays visible; equal areas keep the order of the file.

Pixels no annotation covers are unlabelled (ignore). A polygon reaching outside its image, an
image whose size differs from the file's ``width``/``height``, or an annotation of a category the
file does not list is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from simformer_cli.data.coco_stuff import annotation_mask
from simformer_cli.artifacts.image_files import decode_image_oriented
from simformer_cli.data.source import DecodedSample, RawDataset, identity_lut, read_bytes
from simformer_cli.errors import DataError, UserError
from simformer_cli.settings.labels import ignore_index_for


@dataclass(frozen=True)
class CocoFile:
    """One parsed annotation file: categories (id order), images and their annotations."""

    path: Path
    category_ids: tuple[int, ...]
    category_names: tuple[str, ...]
    images: tuple[dict, ...]
    annotations: dict[int, tuple[dict, ...]]  # image id -> its annotations, in file order


def _fail(path: Path, problem: str, fix: str = "") -> DataError:
    return DataError(path, problem, fix or "export the file again from the annotation tool")


def _categories(path: Path, data: dict) -> tuple[tuple[int, ...], tuple[str, ...]]:
    entries = data.get("categories")
    if not isinstance(entries, list) or not entries:
        raise _fail(path, "has no 'categories' list", "list every class as {\"id\": N, \"name\": \"...\"}")
    pairs = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or isinstance(entry.get("id"), bool) \
                or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            raise _fail(path, f"category {str(entry)[:80]} lacks an integer id or a name")
        pairs.append((entry["id"], entry["name"].strip()))
    pairs.sort()
    ids, names = tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
    for values, what in ((ids, "id"), (names, "name")):
        twice = sorted({v for v in values if values.count(v) > 1}, key=str)
        if twice:
            raise _fail(path, f"two categories share the {what} {twice[0]!r}")
    if len(ids) < 2:
        raise _fail(path, "lists fewer than two categories", "list every class, the ones you tag too")
    return ids, names


def _check_polygons(path: Path, ann: dict, width: int, height: int) -> None:
    """Every polygon vertex lies on the image (0..width, 0..height)."""
    seg = ann.get("segmentation")
    if not isinstance(seg, list):
        return
    for poly in seg:
        if not isinstance(poly, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly):
            raise _fail(path, f"annotation {ann.get('id')} has a polygon that is not a list of numbers")
        xs, ys = poly[0::2], poly[1::2]
        if xs and (min(xs) < 0 or max(xs) > width or min(ys) < 0 or max(ys) > height):
            raise _fail(path, f"annotation {ann.get('id')} has a polygon outside its {width}x{height} image "
                              f"(x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g})",
                        "clip the polygon to the image, or fix the image's width and height")


@lru_cache(maxsize=4)
def _parse_cached(path: str, stamp: tuple[int, int]) -> CocoFile:  # noqa: ARG001 - stamp keys the cache
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{file}: annotation file not found; pass the COCO JSON your annotation tool exported") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(file, f"does not parse as JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
            data.get("annotations"), list):
        raise _fail(file, "is not a COCO annotation file (needs 'images', 'annotations' and 'categories' lists)")
    ids, names = _categories(file, data)
    images, sizes = [], {}
    for entry in data["images"]:
        try:
            image_id, name = int(entry["id"]), str(entry["file_name"])
            size = (int(entry["height"]), int(entry["width"]))
        except (KeyError, TypeError, ValueError):
            raise _fail(file, f"image entry {str(entry)[:80]} lacks an integer id, height, width or a file_name") from None
        if image_id in sizes:
            raise _fail(file, f"two images share the id {image_id}")
        if min(size) <= 0:
            raise _fail(file, f"image {name} has size {size[1]}x{size[0]}")
        sizes[image_id] = size
        images.append({"id": image_id, "file_name": name, "height": size[0], "width": size[1]})
    known = set(ids)
    grouped: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or ann.get("image_id") not in sizes:
            raise _fail(file, f"annotation {str(ann)[:80]} names no listed image")
        if ann.get("category_id") not in known:
            raise _fail(file, f"annotation {ann.get('id')} has category_id {ann.get('category_id')!r}, "
                              "which 'categories' does not list")
        height, width = sizes[ann["image_id"]]
        _check_polygons(file, ann, width, height)
        grouped.setdefault(ann["image_id"], []).append(ann)
    return CocoFile(file, ids, names, tuple(images), {k: tuple(v) for k, v in grouped.items()})


def parse_coco(path: Path) -> CocoFile:
    """The parsed file, once per process and version of the file (size, mtime)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{path}: annotation file not found; pass the COCO JSON your annotation tool exported") from None
    return _parse_cached(str(Path(path).absolute()), (info.st_size, info.st_mtime_ns))


@dataclass(frozen=True)
class CocoSample:
    """An image and its annotations in a COCO file (absolute path), painted at decode time."""

    name: str
    image: str  # relative to the images folder
    annotations: str
    image_id: int

    def files(self) -> tuple[str, ...]:
        return (self.image,)  # the annotation file is fingerprinted once, not once per image

    def decode(self, root: Path, lut: np.ndarray, ignore_index: int) -> DecodedSample:  # noqa: ARG002 - as Sample
        image_path = Path(root) / self.image
        image_bytes = read_bytes(image_path)
        image, _ = decode_image_oriented(image_path, image_bytes)
        coco = parse_coco(Path(self.annotations))
        entry = next(e for e in coco.images if e["id"] == self.image_id)
        height, width = entry["height"], entry["width"]
        if image.shape[:2] != (height, width):
            raise DataError(image_path, f"image is {image.shape[1]}x{image.shape[0]} but {coco.path.name} says "
                                        f"{width}x{height}", "fix the file's width and height, or the image")
        label = np.full((height, width), ignore_index, dtype=np.uint16 if ignore_index > 255 else np.uint8)
        contiguous = {cid: k for k, cid in enumerate(coco.category_ids)}
        layers = []
        for position, ann in enumerate(coco.annotations.get(self.image_id, ())):
            try:
                mask = annotation_mask(ann, height, width)
            except (ValueError, TypeError) as exc:
                raise DataError(coco.path, f"annotation {ann.get('id', position)} of {self.name} has an unusable "
                                           f"segmentation ({exc})") from None
            order = (0 if ann.get("iscrowd") else 1, -int(mask.sum()), position)
            layers.append((order, contiguous[ann["category_id"]], mask))
        for _, class_id, mask in sorted(layers, key=lambda layer: layer[0]):
            label[mask] = class_id
        return DecodedSample(self.name, image, label, image_bytes)


def _samples(images_dir: Path, coco: CocoFile, subset: str) -> tuple[CocoSample, ...]:
    samples, seen = [], {}
    for entry in coco.images:
        rel = Path(entry["file_name"])
        if not (images_dir / rel).is_file():
            raise DataError(coco.path, f"lists image {entry['file_name']}, which is not in {images_dir}",
                            "pass --images with the folder the file names are relative to")
        name = rel.stem
        if name in seen:
            raise DataError(coco.path, f"two {subset} images are named {name!r} ({seen[name]}, {rel})",
                            "give every image its own file name")
        seen[name] = str(rel)
        samples.append(CocoSample(name, rel.as_posix(), str(coco.path), entry["id"]))
    if not samples:
        raise DataError(coco.path, f"lists no images for the {subset} subset")
    return tuple(samples)


def load_coco_json(images: Path | None, annotations: Path | None, val_annotations: Path | None) -> RawDataset:
    """The dataset a COCO export describes: train from ``annotations``, val from ``val_annotations``."""
    if images is None or annotations is None or val_annotations is None:
        raise UserError("--dataset coco-json needs --images DIR, --annotations train.json and --val-annotations "
                        "val.json (a val file may list images without annotations)")
    images = Path(images)
    if not images.is_dir():
        raise UserError(f"--images {images}: folder not found")
    train, val = parse_coco(Path(annotations)), parse_coco(Path(val_annotations))
    if (val.category_ids, val.category_names) != (train.category_ids, train.category_names):
        raise DataError(val.path, f"lists other categories than {train.path.name}",
                        "export both files with the same label set")
    num_classes = len(train.category_ids)
    masked = {ann["category_id"] for anns in train.annotations.values() for ann in anns}
    return RawDataset(
        name="coco-json", root=images, layout="coco-json", class_names=train.category_names,
        lut=identity_lut(num_classes, ignore_index_for(num_classes)),
        subsets={"train": _samples(images, train, "train"), "val": _samples(images, val, "val")},
        category_ids=train.category_ids,
        masked_classes=frozenset(k for k, cid in enumerate(train.category_ids) if cid in masked),
        label_files={"annotations": train.path, "val-annotations": val.path},
        image_ids={subset: {Path(e["file_name"]).stem: e["id"] for e in coco.images}
                   for subset, coco in (("train", train), ("val", val))},
        unmasked_subsets=frozenset(subset for subset, coco in (("train", train), ("val", val)) if not coco.annotations),
    )
