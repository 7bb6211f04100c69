"""The metrics artifact: the eval report (its manifest's summary; ``evaluation.metrics`` says how each
figure is computed), the confusion matrix as its one array, and a per-class IoU chart beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import zarr
from pydantic import BaseModel, ConfigDict, Field

from simformer_cli.artifacts.layout import COMPRESSORS
from simformer_cli.artifacts.manifest import ArraySpec, Frozen, ManifestBase, OmitsAbsent
from simformer_cli.settings.choices import SubsetName

CHART_FILE = "iou.png"
#: Widest boundary band eval offers, in pixels: beyond it the band covers most of any real image.
MAX_BOUNDARY_BAND = 64

Percent = Annotated[float, Field(ge=0.0, le=100.0)]
Count = Annotated[int, Field(ge=0)]

class ClassResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Count
    name: str
    iou: Percent | None
    acc: Percent | None
    gt_pixels: Count
    pred_pixels: Count
    split_role: Literal["base", "novel"]


class NovelConfusion(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    gt_pixels: Count
    as_novel: dict[str, Percent]
    as_base: Percent
    as_nothing: Percent


class NovelDiagnostics(BaseModel):
    """Finding the novel classes (their union) apart from naming them (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    union_iou: Percent
    renamed_miou: Percent
    renaming: dict[str, str]
    confusion: list[NovelConfusion]


class BoundaryResult(BaseModel):
    """mIoU over the labelled pixels within ``width`` pixels of a ground-truth label edge
    (``evaluation.boundary``); same conventions as the whole-image figures."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    width: int = Field(ge=1)
    pixels: Count
    miou: Percent
    base_miou: Percent | None
    novel_miou: Percent | None


class EvalReport(OmitsAbsent):
    """The eval stage's report; field names are fixed by the CLI contract (``boundary`` only with
    ``eval --boundary-band``)."""

    OPTIONAL_FIELDS = ("boundary",)

    model_config = ConfigDict(frozen=True, extra="forbid")

    miou: Percent
    base_miou: Percent | None
    novel_miou: Percent | None
    hiou: Percent | None
    miou_present_only: Percent
    pixel_accuracy: Percent
    mean_accuracy: Percent
    fwiou: Percent
    per_class: list[ClassResult]
    num_images: Count
    evaluated_classes: Count
    ignored_pixels: Count
    warnings: list[str]
    novel: NovelDiagnostics | None = None
    boundary: BoundaryResult | None = Field(None, description="near label edges; only with eval --boundary-band")


class EvalParams(OmitsAbsent, Frozen):
    # Left out of the JSON when None, so that metrics made without it keep the digests they had.
    OPTIONAL_FIELDS = ("boundary_band",)

    subset: SubsetName
    boundary_band: int | None = Field(None, ge=1, le=MAX_BOUNDARY_BAND,
                                      description="band width in pixels of the boundary figures; none without them")


class MetricsManifest(ManifestBase):
    kind: Literal["metrics"] = "metrics"
    schema_version: Literal[1] = 1
    params: EvalParams
    summary: EvalReport
    class_names: list[str]
    base_classes: list[int]
    novel_classes: list[int]


def write_confusion(staging: Path, counts: np.ndarray) -> dict[str, ArraySpec]:
    """Store the (K, K+1) confusion counts (last column: misses); returns the arrays for the manifest."""
    group = zarr.open_group(store=str(staging), mode="w", zarr_format=3)
    group.create_array(name="confusion", shape=counts.shape, dtype="int64", chunks=counts.shape, compressors=COMPRESSORS)
    group["confusion"][...] = counts
    return {"confusion": ArraySpec(shape=list(counts.shape), dtype="int64")}
