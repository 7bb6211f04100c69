"""The pseudo-label artifact: its manifest (the model and split it came from, and its quality), and
reading its labels back for retraining. Arrays: ``labels`` and ``sizes``, laid out as a predictions
artifact's (``predictions``), one label map per training image of the split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from simformer_cli.artifacts.inventory import read_stored
from simformer_cli.artifacts.layout import read_cut
from simformer_cli.artifacts.manifest import Frozen, ManifestBase, OmitsAbsent
from simformer_cli.artifacts.store import open_artifact
from simformer_cli.settings.choices import Among
from simformer_cli.settings.test_time import TestTimeSettings


class PseudoLabelParams(OmitsAbsent, Frozen):
    #: Set for ``among="groups"`` only: every other artifact keeps the plan stamp it always had.
    OPTIONAL_FIELDS = ("groups", "appears", "unnamed")

    test_time: TestTimeSettings
    min_score: float | None = Field(None, ge=0.0, le=1.0, description="novel pixels scoring lower become ignore")
    among: Among = Field(
        "all", description="all: argmax over all classes, kept where it is one of the image's novel classes (the "
                           "paper); image: pixels without base ground truth take the best of the image's novel classes; "
                           "quantile: the same, each class's scores first ranked among its own scores on the "
                           "training images that have it; groups: the same, by the evidence for the pixel's "
                           "k-means group of mask features (counted in images)")
    groups: int | None = Field(None, ge=2, le=255, description="among groups: k-means groups of the open pixels")
    appears: float | None = Field(None, gt=0.0, lt=1.0, description="among groups: the share of an image's open "
                                  "pixels from which a group counts as appearing in it")
    unnamed: Literal["ignore"] | None = Field(None, description="among groups: ignore leaves the pixels whose group has "
                                              "no positive evidence for any novel class of the image unlabelled; absent: "
                                              "they take the class with the most evidence")


class PseudoLabelSummary(Frozen):
    images: int = Field(ge=0)
    seconds: float
    novel_pixel_share: float
    ignore_pixel_share: float
    novel_miou_vs_audit: float | None = None
    novel_iou_per_class: dict[str, float | None] = Field(default_factory=dict)


class PseudoLabelsManifest(ManifestBase):
    kind: Literal["pseudolabels"] = "pseudolabels"
    schema_version: Literal[1] = 1
    params: PseudoLabelParams
    summary: PseudoLabelSummary
    class_names: list[str]
    base_classes: list[int]
    novel_classes: list[int]
    ignore_index: int
    label_dtype: Literal["uint8", "uint16"]


class PseudoLabelReader:
    """Pseudo label of a training image by index, for ``retrain`` (picklable; opens lazily)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._group = None
        self._sizes: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_group": None, "_sizes": None}

    def _open(self) -> np.ndarray:
        if self._group is None:
            _, _, self._group = open_artifact(self.path, PseudoLabelsManifest)
            self._sizes = read_stored(self._group["sizes"])
            self._labels = self._group["labels"]
        return self._sizes  # type: ignore[return-value]

    def __call__(self, index: int) -> np.ndarray:
        h, w = self._open()[index]
        return read_stored(self._labels, (index, slice(0, h), slice(0, w)))

    def read_range(self, start: int, stop: int) -> list[np.ndarray]:
        """Labels ``start..stop-1`` in one read (the training cache's fill)."""
        sizes = self._open()[start:stop]
        return read_cut(self._labels, start, sizes)
