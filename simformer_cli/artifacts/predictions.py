"""The predictions artifact: its manifest (which model, which images, which test-time settings),
its arrays, and reading it back. Pseudo-label artifacts share the layout.

::

    labels       (N, H, W) uint8|uint16  predicted class per pixel, padded to the largest image
    sizes        (N, 2) int32            original (height, width)
    scores       (N, K, H/4, W/4) float16  optional per-class scores at a quarter of the resolution

Image names are the group attribute ``names`` (split image names, or file stems for ``--images``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import zarr
from pydantic import Field

from simformer_cli.artifacts.inventory import read_stored
from simformer_cli.artifacts.layout import COMPRESSORS
from simformer_cli.artifacts.manifest import ArtifactRef, Frozen, ManifestBase, OmitsAbsent
from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.artifacts.store import open_artifact
from simformer_cli.errors import UserError
from simformer_cli.settings.choices import SubsetName
from simformer_cli.settings.test_time import TestTimeSettings

SCORE_STRIDE = 4


class InferParams(Frozen):
    source: Literal["split", "images"]
    subset: SubsetName | None = None
    test_time: TestTimeSettings
    save_scores: bool = False


class InferSummary(Frozen):
    images: int = Field(ge=0)
    seconds: float
    images_per_second: float
    device: str


class PredictionsManifest(OmitsAbsent, ManifestBase):
    OPTIONAL_FIELDS = ("category_ids",)

    kind: Literal["predictions"] = "predictions"
    schema_version: Literal[1] = 1
    params: InferParams
    summary: InferSummary
    class_names: list[str]
    base_classes: list[int]
    novel_classes: list[int]
    ignore_index: int
    label_dtype: Literal["uint8", "uint16"]
    category_ids: list[int] | None = None  # the dataset's own class ids (the split's), where not 0..K-1


class PredictionsArtifact:
    """Read access to a checked predictions artifact."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.manifest, self.digest, self._group = open_artifact(self.path, PredictionsManifest)
        self._sizes = read_stored(self._group["sizes"])
        self._labels = self._group["labels"]

    @property
    def ref(self) -> ArtifactRef:
        return ArtifactRef.of(self.path, self.manifest, self.digest)

    def count(self) -> int:
        return len(self._sizes)

    def names(self) -> list[str]:
        return list(self._group.attrs["names"])

    def sizes(self) -> np.ndarray:
        return self._sizes

    def label(self, index: int) -> np.ndarray:
        h, w = self._sizes[index]
        return read_stored(self._labels, (index, slice(0, h), slice(0, w)))

    def subset_of(self, split: SplitArtifact, split_path: Path) -> str:
        """The subset of ``split`` these predictions cover; refused when they were made on another
        split or on a folder of images."""
        params = self.manifest.params
        if params.source != "split" or params.subset is None:
            raise UserError(f"{self.path}: predictions of a folder of images have no ground truth to compare with")
        if not self.manifest.made_from(split.digest):
            raise UserError(f"{self.path}: these predictions were made on another split than {split_path}; "
                            "evaluate against the split they were made on")
        if self.names() != split.names(params.subset):
            raise UserError(f"{self.path}: image names differ from the split's {params.subset} subset")
        return params.subset

    def scores(self, index: int) -> np.ndarray:
        if "scores" not in self.manifest.arrays:
            raise KeyError("these predictions were made without --save-scores")
        h, w = (-(-int(v) // SCORE_STRIDE) for v in self._sizes[index])
        return read_stored(self._group["scores"], (index, slice(None), slice(0, h), slice(0, w))).astype(np.float32)


def open_or_create_arrays(
    staging: Path, *, count: int, canvas: tuple[int, int], chunk: tuple[int, int], shard_images: int,
    label_dtype: str, ignore_index: int, num_classes: int, save_scores: bool,
) -> dict[str, tuple[list[int], str]]:
    """Create the arrays in a fresh staging folder (or keep those of an interrupted run)."""
    h, w = canvas
    sh, sw = -(-h // SCORE_STRIDE), -(-w // SCORE_STRIDE)
    specs = {
        "labels": ((count, h, w), (1, *chunk), (shard_images, h, w), label_dtype, ignore_index),
        "sizes": ((count, 2), (count, 2), None, "int32", 0),
    }
    if save_scores:
        specs["scores"] = ((count, num_classes, sh, sw), (1, num_classes, sh, sw),
                           (shard_images, num_classes, sh, sw), "float16", 0)
    # mode "a": "w" would empty the folder, losing the resume key beside the arrays. Each array is
    # created unless its metadata is already there, so a run killed between two creations goes on.
    group = zarr.open_group(store=str(staging), mode="a", zarr_format=3)
    for name, (shape, chunks, shards, dtype, fill) in specs.items():
        if not (staging / name / "zarr.json").is_file():
            group.create_array(name=name, shape=shape, chunks=chunks, shards=shards, dtype=dtype,
                               fill_value=fill, compressors=COMPRESSORS, overwrite=True)
    return {name: (list(spec[0]), spec[3]) for name, spec in specs.items()}
