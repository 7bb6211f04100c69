"""The split artifact: its manifest, its arrays, and reading it back.

Per subset (``train``, ``val``, and ``test`` or ``holdout`` where there are such images)::

    SUBSET/images        (N, H, W, 3) uint8   decoded pixels, zero padded to the largest image, cropped on read;
                                              fill (never stored) where the image is kept as its JPEG file
    SUBSET/image_files   (N,) bytes           a JPEG image's file as it was, decoded on read (``image_files``);
                                              empty for the others. One file per chunk, sharded like the labels
    SUBSET/kept_as_file  (N,) bool            which images are in ``image_files``
    SUBSET/pixels_crc32  (N,) uint32          crc32 of a kept file's decoded pixels, checked on every read
    SUBSET/labels        (N, H, W)    uint8|uint16  train: weak labels (novel pixels -> ignore);
                                                    val: full labels; padding = ignore
    SUBSET/sizes         (N, 2) int32 original (height, width)
    SUBSET/image_labels  (N, K) bool  classes present anywhere in the full label (image-level labels)
    audit/train_labels   (N, H, W)    full train labels, for judging pseudo labels; training never opens it

A JPEG's decoded pixels take about nine times its file; a PNG's (lossless) take about its file once
zstd has them, and read faster than the PNG decodes, so only JPEG files are kept as they are.
The group attribute ``names`` of each subset lists its image names (and ``coco_image_ids``, in a
split read from COCO JSON, their ids in the annotation file). Chunks and shards: ``layout``.
Schema 1 kept every image as pixels; it is refused with a request to rebuild the split.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import zarr
from pydantic import Field, model_validator
from zarr.core.sync import sync

from simformer_cli.artifacts.image_files import decode_image_oriented, pixels_crc32
from simformer_cli.artifacts.inventory import named_damage, read_stored
from simformer_cli.artifacts.layout import (
    COMPRESSORS, FILES_DTYPE, SubsetLayout, create_files_array, read_cut, read_files,
)
from simformer_cli.artifacts.manifest import ArtifactRef, Frozen, ManifestBase, OmitsAbsent
from simformer_cli.artifacts.store import open_artifact
from simformer_cli.errors import ArtifactError, DataError, UserError
from simformer_cli.settings.synthetic import SyntheticSettings

AUDIT_LABELS = "audit/train_labels"
#: Subset attribute of a split read from COCO JSON: each image's id in its annotation file.
SOURCE_IMAGE_IDS = "coco_image_ids"


class SplitParams(Frozen):
    """Every setting that changes the split artifact."""

    dataset: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", description="the reader that made it (data.datasets)")
    selection: Literal["ratio", "official", "explicit", "tags"]  # tags: the classes a tag file names
    ratio: tuple[int, int] | None = None
    seed: int | None = None
    official_split: int | None = None
    requested_novel: list[str] | None = None
    keep_train_labels: bool = True
    # Training images moved to the ``holdout`` subset (full labels, like val) for tuning, where the
    # val images are the reported set; chosen by name hash, whatever the class split.
    holdout: int = Field(0, ge=0)
    synthetic: SyntheticSettings | None = None
    synthetic_generator_version: int | None = None


class SubsetSummary(Frozen):
    images: int = Field(ge=0)
    canvas: tuple[int, int]
    pixels: int = Field(ge=0)
    base_share: float
    novel_share: float
    ignore_share: float


class SplitSummary(Frozen):
    subsets: dict[str, SubsetSummary]
    train_images_per_class: list[int]
    val_pixels_per_class: list[int]


class SplitManifest(OmitsAbsent, ManifestBase):
    OPTIONAL_FIELDS = ("label_coverage", "category_ids")  # absent from splits made from full masks

    kind: Literal["split"] = "split"
    schema_version: Literal[2] = 2
    params: SplitParams
    summary: SplitSummary
    class_names: list[str]
    base_classes: list[int]
    novel_classes: list[int]
    ignore_index: int
    label_dtype: Literal["uint8", "uint16"]
    # What each subset's stored labels hold where not every class has masks (``--tags``): "base"
    # (base classes only, novel classes known from tags) or "none" (no masks); absent: every class.
    label_coverage: dict[str, Literal["full", "base", "none"]] | None = None
    # The dataset's own id of each class (COCO category ids), where they are not 0..K-1.
    category_ids: list[int] | None = None

    def coverage(self, subset: str) -> str:
        return (self.label_coverage or {}).get(subset, "full")

    @model_validator(mode="after")
    def _classes_partition(self) -> SplitManifest:
        num = len(self.class_names)
        base, novel = set(self.base_classes), set(self.novel_classes)
        if base & novel or base | novel != set(range(num)):
            raise ValueError("base_classes and novel_classes must partition 0..K-1")
        if self.base_classes != sorted(base) or self.novel_classes != sorted(novel):
            raise ValueError("base_classes and novel_classes must be sorted")
        if not novel or not base:
            raise ValueError("a split needs at least one base and one novel class")
        return self

    @model_validator(mode="after")
    def _image_files_are_files(self) -> SplitManifest:
        """Readers decode ``SUBSET/image_files`` as files: an array of anything else is never read."""
        for subset, summary in self.summary.subsets.items():
            spec = self.arrays.get(f"{subset}/image_files")
            if spec is None or spec.dtype != FILES_DTYPE or spec.shape != [summary.images]:
                raise ValueError(f"{subset}/image_files must be an array of {summary.images} files ({FILES_DTYPE})")
        return self


def create_arrays(
    group: zarr.Group, layout: SubsetLayout, *, num_classes: int, label_dtype: str, ignore_index: int, audit: bool
) -> dict[str, tuple[list[int], str]]:
    """Create the arrays of one subset; returns {path: (shape, dtype)} for the manifest."""
    n, (h, w), (ch, cw), s = layout.count, layout.canvas, layout.chunk, layout.shard_images
    sub = layout.subset
    specs: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], str, int | bytes]] = {
        f"{sub}/images": ((n, h, w, 3), (1, ch, cw, 3), (s, h, w, 3), "uint8", 0),
        f"{sub}/image_files": ((n,), (1,), (s,), FILES_DTYPE, b""),
        f"{sub}/kept_as_file": ((n,), (n,), (n,), "bool", 0),
        f"{sub}/pixels_crc32": ((n,), (n,), (n,), "uint32", 0),
        f"{sub}/labels": ((n, h, w), (1, ch, cw), (s, h, w), label_dtype, ignore_index),
        f"{sub}/sizes": ((n, 2), (n, 2), (n, 2), "int32", 0),
        f"{sub}/image_labels": ((n, num_classes), (n, num_classes), (n, num_classes), "bool", 0),
    }
    if audit:
        specs[AUDIT_LABELS] = ((n, h, w), (1, ch, cw), (s, h, w), label_dtype, ignore_index)
    for path, (shape, chunks, shards, dtype, fill) in specs.items():
        if dtype == FILES_DTYPE:
            create_files_array(group, path, n, s)
            continue
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

    @property
    def ref(self) -> ArtifactRef:
        """This split as an input of a stage's manifest."""
        return ArtifactRef.of(self.path, self.manifest, self.digest)

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

    def source_image_ids(self, subset: str) -> list[int] | None:
        """Each image's id in the COCO file it came from, where the split was read from one."""
        ids = self._group[subset].attrs.get(SOURCE_IMAGE_IDS)
        return None if ids is None else [int(i) for i in ids]

    def sizes(self, subset: str) -> np.ndarray:
        return self._small(f"{subset}/sizes")

    def image_labels(self, subset: str) -> np.ndarray:
        return self._small(f"{subset}/image_labels")

    def kept_as_file(self, subset: str) -> np.ndarray:
        """(N,) bool: which images are kept as their JPEG file (the others as pixels)."""
        return self._small(f"{subset}/kept_as_file")

    def image(self, subset: str, index: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB; read-only when decoded from a kept file."""
        if self.kept_as_file(subset)[index]:
            return self._decoded(subset, index, read_files(self._array(f"{subset}/image_files"), index, index + 1)[0])
        h, w = self.sizes(subset)[index]
        return read_stored(self._array(f"{subset}/images"), (index, slice(0, h), slice(0, w)))

    def _decoded(self, subset: str, index: int, data: bytes) -> np.ndarray:
        """The pixels of one kept image file, refused unless they are the ones the ingest decoded."""
        try:
            image = decode_image_oriented(self.path, data)[0]
        except DataError as exc:
            problem = f"does not decode here ({exc.problem})"
        else:
            height, width = (int(v) for v in self.sizes(subset)[index])
            expected_crc = int(self._small(f"{subset}/pixels_crc32")[index])
            if image.shape[:2] == (height, width) and pixels_crc32(image) == expected_crc:
                return image
            problem = "decodes to other pixels here than when the split was made (another Pillow or libjpeg build?)"
        raise ArtifactError(f"{self.path}: image {self.names(subset)[index]!r} of {subset!r} {problem}; rebuild the "
                            "split on this machine with simformer split (same options, plus --force)")

    def label(self, subset: str, index: int) -> np.ndarray:
        """Weak label for ``train`` (novel pixels are ignore), full label for ``val``."""
        h, w = self.sizes(subset)[index]
        return read_stored(self._array(f"{subset}/labels"), (index, slice(0, h), slice(0, w)))

    def read_many(self, subset: str, indices: Sequence[int], *, labels: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The images (and, with ``labels``, the labels as :meth:`label` gives them) of several
        indices, read concurrently in one trip through zarr's event loop: a training batch's reads
        then overlap instead of paying each read's round trip in turn. -> (images, labels or [])."""
        sizes, kept = self.sizes(subset), self.kept_as_file(subset)
        pixels, files = self._array(f"{subset}/images"), self._array(f"{subset}/image_files")
        arrays = [pixels, files, self._array(f"{subset}/labels")] if labels else [pixels, files]

        def cut(i: int) -> tuple:
            return (i, slice(0, int(sizes[i][0])), slice(0, int(sizes[i][1])))

        async def read_all() -> list:
            reads = [files.async_array.getitem((slice(i, i + 1),)) if kept[i] else pixels.async_array.getitem(cut(i))
                     for i in map(int, indices)]
            if labels:
                reads += [arrays[2].async_array.getitem(cut(i)) for i in map(int, indices)]
            return await asyncio.gather(*reads)

        with named_damage(*arrays):
            read = sync(read_all())
        images = [self._decoded(subset, int(i), read[k][0]) if kept[int(i)] else np.asarray(read[k])
                  for k, i in enumerate(indices)]
        return images, [np.asarray(value) for value in read[len(images):]]

    def read_range(self, subset: str, start: int, stop: int, *, labels: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Images (and labels) ``start..stop-1`` in one read per array, each cut to its own size
        (copies, so the padded block is not kept alive). Cheapest when the range is whole shards
        (:meth:`images_per_shard`). -> (images, labels or [])."""
        sizes, kept = self.sizes(subset)[start:stop], self.kept_as_file(subset)[start:stop]
        images = (read_cut(self._array(f"{subset}/images"), start, sizes) if not kept.all()
                  else [np.empty(0)] * len(kept))
        if kept.any():
            files = read_files(self._array(f"{subset}/image_files"), start, stop)
            images = [self._decoded(subset, start + k, data) if kept[k] else image
                      for k, (data, image) in enumerate(zip(files, images))]
        if not labels:
            return images, []
        return images, read_cut(self._array(f"{subset}/labels"), start, sizes)

    def images_per_shard(self, subset: str) -> int:
        array = self._array(f"{subset}/images")
        return int((array.shards or array.chunks)[0])

    def full_labels(self, subset: str) -> Callable[[int], np.ndarray]:
        """Full labels by index: a labelled subset's own, or the audit copy of the train labels
        (train labels are weak)."""
        if subset != "train":
            return lambda index: self.label(subset, index)
        if AUDIT_LABELS not in self.manifest.arrays:
            raise UserError("eval on train predictions needs the full train labels; rebuild the split with --keep-train-labels")
        return lambda index: read_audit_label(self, index)


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
