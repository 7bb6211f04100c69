"""What every dataset reader produces: a :class:`RawDataset` of :class:`Sample` objects.

A reader only lists files and says how their label values map to class ids; decoding and
validation happen here, once, for every format (images through ``artifacts.image_files``, the
decoder that every reader of a split shares). Samples are small picklable objects so the
split stage can hand them to worker processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from simformer_cli.artifacts.image_files import QUARTER_TURNS, decode_image_oriented
from simformer_cli.settings.labels import ignore_index_for
from simformer_cli.errors import DataError, UserError

#: Value that marks a raw label value as invalid in a label lookup table.
INVALID = -1


@dataclass(frozen=True)
class DecodedSample:
    """One image with its label map in contiguous class ids (``None`` for an unlabelled image)."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    label: np.ndarray | None  # (H, W) class ids, ignore_index where unlabelled
    image_file: bytes  # the image file's bytes, which decode_image_oriented turns into ``image``
    tags: tuple[int, ...] | None = None  # novel classes the image shows, where they come as tags (data.tags)


class Sample(Protocol):
    """One image of a raw dataset, not yet read."""

    name: str

    def files(self) -> tuple[str, ...]:
        """Files this sample reads, relative to the dataset root; the image file first."""
        ...

    def decode(self, root: Path, lut: np.ndarray, ignore_index: int) -> DecodedSample:
        """Read, validate and map to class ids; raise :class:`DataError` naming the bad file."""
        ...


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file is missing", "restore it or remove it from the dataset") from None
    except OSError as exc:
        raise DataError(path, f"cannot be read ({exc.strerror or exc})") from None


def decode_label_png(path: Path, data: bytes, wide: bool) -> np.ndarray:
    """Decode a single-channel label PNG; 16-bit values are only accepted when ``wide``."""
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode = im.mode
            array = np.asarray(im)
    except Image.DecompressionBombError as exc:
        raise DataError(path, f"label image is too large to read safely ({str(exc).split(',')[0]})", "resize it or remove it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"not a readable label image ({exc})", "re-download or delete the file") from None
    if mode in ("L", "P"):
        return array.astype(np.uint8, copy=False)
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        if not wide:
            raise DataError(
                path,
                f"label is a {'16' if mode.startswith('I;16') else '32'}-bit image but this dataset's "
                "class ids fit in 8 bits",
                "save labels as 8-bit single-channel PNGs (class id per pixel, 255 = ignore)",
            )
        return array.astype(np.int64)
    raise DataError(
        path,
        f"label image has mode {mode!r}; expected a single-channel (grey or palette) PNG",
        "store one class id per pixel, not colours",
    )


def apply_lut(path: Path, raw: np.ndarray, lut: np.ndarray, ignore_index: int, dtype: np.dtype) -> np.ndarray:
    """Map raw label values to class ids through ``lut``; any value the lut marks invalid is an error."""
    raw = raw.astype(np.int64, copy=False)
    too_big = raw >= len(lut)
    mapped = lut[np.where(too_big, 0, raw)]
    bad = too_big | (mapped == INVALID)
    if bad.any():
        values = sorted(int(v) for v in np.unique(raw[bad])[:5])
        raise DataError(
            path,
            f"label values {values} are neither a class id nor the ignore value {ignore_index}",
            "check that the labels use this dataset's class numbering",
        )
    return mapped.astype(dtype, copy=False)


@dataclass(frozen=True)
class PngSample:
    """An image file and an optional label PNG, both relative to the dataset root."""

    name: str
    image: str
    label: str | None

    def files(self) -> tuple[str, ...]:
        return (self.image,) if self.label is None else (self.image, self.label)

    def decode(self, root: Path, lut: np.ndarray, ignore_index: int) -> DecodedSample:
        image_path = root / self.image
        image_bytes = read_bytes(image_path)
        image, orientation = decode_image_oriented(image_path, image_bytes)
        label = None
        if self.label is not None:
            label_path = root / self.label
            label_bytes = read_bytes(label_path)
            wide = ignore_index > 255
            raw = decode_label_png(label_path, label_bytes, wide)
            label = apply_lut(label_path, raw, lut, ignore_index, np.dtype(np.uint16 if wide else np.uint8))
            check_same_size(label_path, label, image, orientation)
        return DecodedSample(self.name, image, label, image_bytes)


def check_same_size(label_path: Path, label: np.ndarray, image: np.ndarray, orientation: int = 1) -> None:
    """Labels match the image as displayed; ``orientation`` is the image's EXIF orientation."""
    if label.shape != image.shape[:2] and orientation in QUARTER_TURNS and label.shape == image.shape[1::-1]:
        raise DataError(
            label_path,
            f"label is {label.shape[1]}x{label.shape[0]} but its image is {image.shape[1]}x{image.shape[0]} as "
            f"displayed (its EXIF orientation {orientation} turns the stored {image.shape[0]}x{image.shape[1]} "
            "pixels upright)",
            "labels must match the image as displayed: turn the label the same way, or store the image upright",
        )
    if label.shape != image.shape[:2]:
        raise DataError(
            label_path,
            f"label is {label.shape[1]}x{label.shape[0]} but its image is {image.shape[1]}x{image.shape[0]}",
            "labels must have exactly the size of their image",
        )


@dataclass(frozen=True)
class RawDataset:
    """A dataset on disk: class names, ignore value, and the samples of each subset.

    ``lut`` maps every raw label value to a contiguous class id, the ignore value, or INVALID.
    ``subsets`` holds ``"train"`` and ``"val"`` (either may be empty only if the caller allows it),
    and ``"test"`` where the dataset has a held-out test subset.
    ``always_base`` lists class ids a random split never makes novel (e.g. a background class).
    """

    name: str
    root: Path
    layout: str
    class_names: tuple[str, ...]
    lut: np.ndarray
    subsets: dict[str, tuple[Sample, ...]] = field(default_factory=dict)
    always_base: tuple[int, ...] = ()
    # Own data (base masks + tags, data.tags): subsets listed without any mask, classes that have a
    # training mask (where the reader knows it without decoding), and the files that hold labels.
    unmasked_subsets: frozenset[str] = frozenset()
    masked_classes: frozenset[int] | None = None
    label_files: dict[str, Path] = field(default_factory=dict)
    category_ids: tuple[int, ...] | None = None  # the file's own class ids (COCO), where not 0..K-1
    image_ids: dict[str, dict[str, int]] = field(default_factory=dict)  # subset -> name -> the file's image id (COCO)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def ignore_index(self) -> int:
        return ignore_index_for(self.num_classes)


def identity_lut(num_classes: int, ignore_index: int) -> np.ndarray:
    """Lut for labels that already hold 0..K-1 and the ignore value."""
    lut = np.full(max(ignore_index, num_classes) + 1, INVALID, dtype=np.int64)
    lut[:num_classes] = np.arange(num_classes)
    lut[ignore_index] = ignore_index
    return lut


@lru_cache(maxsize=4)
def cached_json(path: str) -> object:
    """Parse a (possibly large) JSON file once per process."""
    import json

    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


#: Subsets in the order they are stored: test where the dataset has one, holdout with --holdout.
SUBSET_ORDER = ("train", "val", "test", "holdout")


def hold_out(raw: RawDataset, count: int) -> RawDataset:
    """Move ``count`` training images to a ``holdout`` subset (kept with full labels, for tuning):
    those whose names have the smallest ``sha256("simformer-holdout:NAME")``, so the choice does not
    depend on the class split, the order of files or the machine."""
    if count == 0:
        return raw
    train = raw.subsets["train"]
    if count > len(train) - 2:
        raise UserError(f"--holdout {count}: the dataset has {len(train)} training images; "
                        "hold out fewer, leaving at least 2 to train on")
    ranked = sorted(train, key=lambda sample: hashlib.sha256(f"simformer-holdout:{sample.name}".encode()).digest())
    held = {sample.name for sample in ranked[:count]}
    subsets = dict(raw.subsets, train=tuple(s for s in train if s.name not in held),
                   holdout=tuple(s for s in train if s.name in held))
    return dataclasses.replace(raw, subsets=subsets)


def subsets_of(raw: RawDataset) -> tuple[str, ...]:
    return tuple(subset for subset in SUBSET_ORDER if subset in raw.subsets)
