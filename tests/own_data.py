"""Turning a fully labelled folder dataset into what a user has: base masks and novel tags."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image


def class_names(root: Path) -> list[str]:
    spec = json.loads((root / "classes.json").read_text())
    return spec["classes"] if isinstance(spec, dict) else spec


def tags_of(full_root: Path, novel: list[str], subsets: tuple[str, ...] = ("train",)) -> dict[str, list[str]]:
    """``SUBSET/NAME.png`` -> the novel classes its full label map shows."""
    names = class_names(full_root)
    tags = {}
    for subset in subsets:
        for path in sorted((full_root / "labels" / subset).glob("*.png")):
            label = np.asarray(Image.open(path))
            tags[f"{subset}/{path.stem}.png"] = [n for n in novel if (label == names.index(n)).any()]
    return tags


def write_tags(path: Path, tags: dict[str, list[str]], form: str) -> Path:
    """``form``: ``list`` (CSV image,labels), ``pairs`` (CSV image,label) or ``json``."""
    if form == "json":
        path.write_text(json.dumps(tags))
    elif form == "list":
        path.write_text("image,labels\n" + "".join(f"{image},{';'.join(names)}\n" for image, names in tags.items()))
    else:
        rows = [f"{image},{name}\n" for image, names in tags.items() for name in (names or [""])]
        path.write_text("image,label\n" + "".join(rows))
    return path


def to_base_masks(full_root: Path, out: Path, novel: list[str], subsets: tuple[str, ...] = ("train",)) -> Path:
    """A copy of a folder dataset whose label maps of ``subsets`` hold base classes only (novel = 255)."""
    shutil.copytree(full_root, out)
    ids = [class_names(full_root).index(n) for n in novel]
    for subset in subsets:
        for path in sorted((out / "labels" / subset).glob("*.png")):
            label = np.array(Image.open(path))
            label[np.isin(label, ids)] = 255
            Image.fromarray(label).save(path)
    return out


def category_id(class_id: int) -> int:
    """Category ids as an annotation tool may number them: not contiguous, not from 0."""
    return 3 + 7 * class_id


def to_coco(full_root: Path, out: Path, novel: list[str], val_novel_masks: bool = True) -> dict[str, Path]:
    """The dataset as a COCO export: ``images/SUBSET/*``, ``train.json`` with masks of the base classes
    only (one RLE per image and class, compressed and uncompressed in turn) and ``val.json`` with
    every class (or the base ones), all categories listed with non-contiguous ids."""
    from pycocotools import mask as mask_utils

    names = class_names(full_root)
    novel_ids = {names.index(n) for n in novel}
    shutil.copytree(full_root / "images", out / "images")
    files = {"images": out / "images"}
    next_id = 1
    for subset in ("train", "val"):
        masked = set(range(len(names))) - (novel_ids if subset == "train" or not val_novel_masks else set())
        images, annotations = [], []
        for image_id, path in enumerate(sorted((full_root / "labels" / subset).glob("*.png")), start=1):
            label = np.asarray(Image.open(path))
            image = next((full_root / "images" / subset).glob(f"{path.stem}.*"))
            images.append({"id": image_id, "file_name": f"{subset}/{image.name}", "height": label.shape[0],
                           "width": label.shape[1]})
            for class_id in sorted(set(np.unique(label).tolist()) & masked):
                rle = mask_utils.encode(np.asfortranarray(label == class_id, dtype=np.uint8))
                if next_id % 2:
                    segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
                else:  # uncompressed: column-major run lengths starting with a run of zeros
                    flat = (label == class_id).flatten(order="F").astype(np.int8)
                    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
                    runs = np.diff(np.concatenate([[0], edges])).tolist()
                    segmentation = {"size": list(label.shape), "counts": runs}
                annotations.append({"id": next_id, "image_id": image_id, "category_id": category_id(class_id),
                                    "segmentation": segmentation, "iscrowd": 0, "area": int((label == class_id).sum())})
                next_id += 1
        document = {"images": images, "annotations": annotations,
                    "categories": [{"id": category_id(c), "name": n} for c, n in enumerate(names)]}
        files[subset] = out / f"{subset}.json"
        files[subset].write_text(json.dumps(document))
    return files
