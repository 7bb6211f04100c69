"""Manifest of a pseudo-label artifact: the model and split it came from, and its quality."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from simformer_cli.artifacts.manifest import Frozen, ManifestBase
from simformer_cli.inference.predict import TestTimeSettings


class PseudoLabelParams(Frozen):
    test_time: TestTimeSettings
    min_score: float | None = Field(None, ge=0.0, le=1.0, description="novel pixels scoring lower become ignore")
    among: Literal["all", "image"] = Field(
        "all", description="all: argmax over all classes, kept where it is one of the image's novel classes (the "
                           "paper); image: pixels without base ground truth take the best of the image's novel classes")


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
