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
