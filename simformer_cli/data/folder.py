"""The documented custom dataset format (``--dataset folder``), also what the synthetic generator writes.

::

    ROOT/classes.json          {"classes": ["sky", "road", ...], "ignore_index": 255, "always_base": ["sky"]}
    ROOT/images/train/*.jpg|*.jpeg|*.png
    ROOT/images/val/...
    ROOT/labels/train/*.png    one class id per pixel (index into "classes"), ignore_index = unlabelled
    ROOT/labels/val/...

Images and labels pair by file stem. ``ignore_index`` (default 255) is the value the label files
use for unlabelled pixels; it is mapped to the project's own ignore value. ``always_base``
(optional) names classes that a random ``--ratio`` split never makes novel.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from simformer_cli.settings.labels import ignore_index_for
from simformer_cli.data.source import INVALID, PngSample, RawDataset
from simformer_cli.errors import DataError, UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SUBSETS = ("train", "val")
#: Subsets a folder dataset may add: test, held out for reporting (never used for any decision).
OPTIONAL_SUBSETS = ("test",)


def _read_classes(path: Path) -> tuple[tuple[str, ...], int, tuple[str, ...]]:
    if not path.is_file():
        raise UserError(f"{path}: missing; a folder dataset needs classes.json listing the class names in id order")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"not valid JSON ({exc})") from None
    if isinstance(spec, list):
        spec = {"classes": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("classes"), list):
        raise DataError(path, 'expected {"classes": [names...]} or a list of names')
    names = spec["classes"]
    if len(names) < 2 or not all(isinstance(n, str) and n.strip() and "," not in n for n in names):
        raise DataError(path, "classes must be at least two non-empty names without commas")
    if len(set(names)) != len(names):
        raise DataError(path, "class names must be unique")
    ignore = spec.get("ignore_index", 255)
    if not isinstance(ignore, int) or ignore < len(names) or ignore > 65535:
        raise DataError(path, f"ignore_index must be an integer >= the number of classes ({len(names)}) and <= 65535")
    always_base = spec.get("always_base", [])
    unknown = [n for n in always_base if n not in names] if isinstance(always_base, list) else ["?"]
    if unknown:
        raise DataError(path, f"always_base names unknown classes {unknown}")
    return tuple(names), ignore, tuple(always_base)


def _files_by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes:
            if path.stem in found:
                raise DataError(path, f"two files share the name {path.stem!r}", "keep one per image")
            found[path.stem] = path
    return found


def pair_by_stem(root: Path, images_dir: Path, labels_dir: Path, subset: str, *,
                 masks_optional: bool = False) -> tuple[PngSample, ...]:
    """Pair ``images_dir/*`` with ``labels_dir/*.png`` by stem; an unpaired file is an error.
    With ``masks_optional``, a missing ``labels_dir`` gives images without labels."""
    if masks_optional and images_dir.is_dir() and not labels_dir.exists():
        images = _files_by_stem(images_dir, IMAGE_SUFFIXES)
        if not images:
            raise UserError(f"{images_dir}: no images (.jpg, .jpeg, .png) in the {subset} subset")
        return tuple(PngSample(name=stem, image=str(images[stem].relative_to(root)), label=None) for stem in sorted(images))
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise UserError(f"{folder}: missing; expected images and labels of the {subset} subset there")
    images = _files_by_stem(images_dir, IMAGE_SUFFIXES)
    labels = _files_by_stem(labels_dir, (".png",))
    if not images:
        raise UserError(f"{images_dir}: no images (.jpg, .jpeg, .png) in the {subset} subset")
    for stem, path in images.items():
        if stem not in labels:
            raise DataError(path, f"has no label {labels_dir / (stem + '.png')}", "add the label or remove the image")
    for stem, path in labels.items():
        if stem not in images:
            raise DataError(path, "has no matching image", "add the image or remove the label")
    return tuple(
        PngSample(
            name=stem,
            image=str(images[stem].relative_to(root)),
            label=str(labels[stem].relative_to(root)),
        )
        for stem in sorted(images)
    )


def load_folder(root: Path, *, masks_optional: bool = False) -> RawDataset:
    """The folder dataset at ``root``; ``masks_optional`` lets val and test come without ``labels/``
    (their images are then predicted, not scored)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: dataset folder not found; pass --root with a folder holding classes.json, images/ and labels/")
    names, file_ignore, always_base = _read_classes(root / "classes.json")
    ignore = ignore_index_for(len(names))
    lut = np.full(max(file_ignore, len(names)) + 1, INVALID, dtype=np.int64)
    lut[: len(names)] = np.arange(len(names))
    lut[file_ignore] = ignore
    subsets = {
        subset: pair_by_stem(root, root / "images" / subset, root / "labels" / subset, subset,
                             masks_optional=masks_optional and subset != "train")
        for subset in (*SUBSETS, *(s for s in OPTIONAL_SUBSETS if (root / "images" / s).is_dir()))
    }
    return RawDataset(
        name="folder",
        root=root,
        layout="folder",
        class_names=names,
        lut=lut,
        subsets=subsets,
        always_base=tuple(names.index(n) for n in always_base),
        unmasked_subsets=frozenset(name for name, samples in subsets.items() if all(s.label is None for s in samples)),
    )
