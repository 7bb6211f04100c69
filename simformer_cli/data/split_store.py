"""The array layout of a split artifact, and reading it back.

Per subset (``train``, ``val``)::

    SUBSET/images        (N, H, W, 3) uint8   zero padded to the largest image, cropped on read
    SUBSET/labels        (N, H, W)    uint8|uint16  train: weak labels (novel pixels -> ignore);
                                                    val: full labels; padding = ignore
    SUBSET/sizes         (N, 2) int32 original (height, width)
    SUBSET/image_labels  (N, K) bool  classes present anywhere in the full label (image-level labels)
    audit/train_labels   (N, H, W)    full train labels, for judging pseudo labels; training never opens it

Chunks are one image by at most 256x256 pixels; shards hold whole groups of images along the first
axis, so one writer owns a shard and padding chunks (all fill value) are never stored. Every chunk
ends in a crc32c of its compressed bytes, checked on every read (a shard's index has its own).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.sync import sync

from simformer_cli.artifacts.inventory import named_damage, read_stored
from simformer_cli.artifacts.split_manifest import SplitManifest
from simformer_cli.artifacts.store import open_artifact

CHUNK_EDGE = 256
SHARD_TARGET_BYTES = 32 << 20
MAX_SHARD_IMAGES = 64
COMPRESSORS = (ZstdCodec(level=3), Crc32cCodec())  # the crc makes damaged bytes fail to decode
AUDIT_LABELS = "audit/train_labels"


@dataclass(frozen=True)
class SubsetLayout:
    """Where the images of one subset go: padded canvas, chunk edge, images per shard."""

    subset: str
    count: int
    canvas: tuple[int, int]
    chunk: tuple[int, int]
    shard_images: int

    def shard_ranges(self) -> list[range]:
        step = self.shard_images
        return [range(start, min(start + step, self.count)) for start in range(0, self.count, step)]


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def plan_layout(subset: str, sizes: np.ndarray) -> SubsetLayout:
    """Pick canvas, chunk and shard sizes from the (N, 2) image sizes of a subset."""
    max_h, max_w = (int(v) for v in sizes.max(axis=0))
    chunk = (min(CHUNK_EDGE, max_h), min(CHUNK_EDGE, max_w))
    canvas = (_round_up(max_h, chunk[0]), _round_up(max_w, chunk[1]))
    typical = float(np.median(sizes[:, 0].astype(np.float64) * sizes[:, 1])) * 3
    per_shard = int(np.clip(SHARD_TARGET_BYTES // max(typical, 1.0), 1, MAX_SHARD_IMAGES))
    per_shard = 1 << (per_shard.bit_length() - 1)  # a power of two keeps shard files evenly sized
    return SubsetLayout(subset, len(sizes), canvas, chunk, per_shard)


def create_arrays(
    group: zarr.Group, layout: SubsetLayout, *, num_classes: int, label_dtype: str, ignore_index: int, audit: bool
) -> dict[str, tuple[list[int], str]]:
    """Create the arrays of one subset; returns {path: (shape, dtype)} for the manifest."""
    n, (h, w), (ch, cw), s = layout.count, layout.canvas, layout.chunk, layout.shard_images
    sub = layout.subset
    specs: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], str, int]] = {
        f"{sub}/images": ((n, h, w, 3), (1, ch, cw, 3), (s, h, w, 3), "uint8", 0),
        f"{sub}/labels": ((n, h, w), (1, ch, cw), (s, h, w), label_dtype, ignore_index),
        f"{sub}/sizes": ((n, 2), (n, 2), (n, 2), "int32", 0),
        f"{sub}/image_labels": ((n, num_classes), (n, num_classes), (n, num_classes), "bool", 0),
    }
    if audit:
        specs[AUDIT_LABELS] = ((n, h, w), (1, ch, cw), (s, h, w), label_dtype, ignore_index)
    for path, (shape, chunks, shards, dtype, fill) in specs.items():
        group.create_array(
            name=path,
            shape=shape,
            chunks=chunks,
            shards=shards if shards != shape else None,
            dtype=dtype,
            fill_value=fill,
            compressors=COMPRESSORS,
        )
    return {path: (list(spec[0]), spec[3]) for path, spec in specs.items()}


def write_shard_block(array: zarr.Array, start: int, items: list[np.ndarray], fill: int) -> None:
    """Write consecutive images (whole shard) at once, padded to the block's largest size."""
    height = max(item.shape[0] for item in items)
    width = max(item.shape[1] for item in items)
    ch, cw = array.chunks[1], array.chunks[2]
    height = min(_round_up(height, ch), array.shape[1])
    width = min(_round_up(width, cw), array.shape[2])
    block = np.full((len(items), height, width, *items[0].shape[2:]), fill, dtype=array.dtype)
    for k, item in enumerate(items):
        block[k, : item.shape[0], : item.shape[1]] = item
    array[start : start + len(items), :height, :width] = block


class SplitArtifact:
    """Read access to a checked split artifact (train code reaches weak labels only)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.manifest, self.digest, self._group = open_artifact(self.path, SplitManifest)
        self._cache: dict[str, np.ndarray] = {}
        self._arrays: dict[str, zarr.Array] = {}

    @property
    def num_classes(self) -> int:
        return len(self.manifest.class_names)

    def _small(self, key: str) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = read_stored(self._array(key))
        return self._cache[key]

    def _array(self, key: str) -> zarr.Array:
        """Array handles are kept: opening one reads its metadata from disk."""
        if key not in self._arrays:
            self._arrays[key] = self._group[key]
        return self._arrays[key]

    def count(self, subset: str) -> int:
        return self.manifest.summary.subsets[subset].images

    def names(self, subset: str) -> list[str]:
        return list(self._group[subset].attrs["names"])

    def sizes(self, subset: str) -> np.ndarray:
        return self._small(f"{subset}/sizes")

    def image_labels(self, subset: str) -> np.ndarray:
        return self._small(f"{subset}/image_labels")

    def image(self, subset: str, index: int) -> np.ndarray:
        h, w = self.sizes(subset)[index]
        return read_stored(self._array(f"{subset}/images"), (index, slice(0, h), slice(0, w)))

    def label(self, subset: str, index: int) -> np.ndarray:
        """Weak label for ``train`` (novel pixels are ignore), full label for ``val``."""
        h, w = self.sizes(subset)[index]
        return read_stored(self._array(f"{subset}/labels"), (index, slice(0, h), slice(0, w)))

    def read_many(self, subset: str, indices: Sequence[int], *, labels: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The images (and, with ``labels``, the labels as :meth:`label` gives them) of several
        indices, read concurrently in one trip through zarr's event loop: a training batch's reads
        then overlap instead of paying each read's round trip in turn. -> (images, labels or [])."""
        sizes = self.sizes(subset)
        arrays = [self._array(f"{subset}/images")]
        if labels:
            arrays.append(self._array(f"{subset}/labels"))
        selections = [(int(i), slice(0, int(sizes[i][0])), slice(0, int(sizes[i][1]))) for i in indices]

        async def read_all() -> list:
            return await asyncio.gather(*(array.async_array.getitem(where) for array in arrays for where in selections))

        with named_damage(*arrays):
            read = [np.asarray(value) for value in sync(read_all())]
        return read[: len(selections)], read[len(selections):]

    def read_range(self, subset: str, start: int, stop: int, *, labels: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Images (and labels) ``start..stop-1`` in one read per array, each cut to its own size
        (copies, so the padded block is not kept alive). Cheapest when the range is whole shards
        (:meth:`images_per_shard`). -> (images, labels or [])."""
        sizes = self.sizes(subset)[start:stop]
        cut = [read_cut(self._array(f"{subset}/{name}"), start, sizes)
               for name in (("images", "labels") if labels else ("images",))]
        return cut[0], cut[1] if labels else []

    def images_per_shard(self, subset: str) -> int:
        array = self._array(f"{subset}/images")
        return int((array.shards or array.chunks)[0])


def read_cut(array: zarr.Array, start: int, sizes: np.ndarray) -> list[np.ndarray]:
    """Items ``start..start+len(sizes)-1`` of a padded (N, H, W[, C]) array in one read, each cut
    to its (height, width) in ``sizes`` (copies, so the padded block is not kept alive)."""
    height, width = (int(v) for v in sizes.max(axis=0))
    block = read_stored(array, (slice(start, start + len(sizes)), slice(0, height), slice(0, width)))
    return [block[n, :h, :w].copy() for n, (h, w) in enumerate(sizes)]


def read_audit_label(split: SplitArtifact, index: int) -> np.ndarray:
    """Full train label of one image (novel pixels included). Only pseudo-label auditing calls this."""
    if AUDIT_LABELS not in split.manifest.arrays:
        raise KeyError("this split was made without --keep-train-labels")
    h, w = split.sizes("train")[index]
    return read_stored(split._array(AUDIT_LABELS), (index, slice(0, h), slice(0, w)))


class AuditLabelReader:
    """Full train label by index, for the ``oracle`` method (the fully supervised upper bound that
    the quality benchmark compares against) and for ``image_labels=crop`` (paper parity: the
    classes inside each crop); never for default weak-shot training. Picklable; opens lazily."""

    def __init__(self, split_path: Path) -> None:
        self.split_path = Path(split_path)
        self._split: SplitArtifact | None = None

    def __getstate__(self) -> dict:
        return {"split_path": self.split_path, "_split": None}

    def __call__(self, index: int) -> np.ndarray:
        if self._split is None:
            self._split = SplitArtifact(self.split_path)
        return read_audit_label(self._split, index)
