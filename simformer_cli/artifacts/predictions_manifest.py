"""Manifest of a predictions artifact: which model, which images, which test-time settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from simformer_cli.artifacts.manifest import Frozen, ManifestBase
from simformer_cli.artifacts.split_manifest import SubsetName
from simformer_cli.inference.predict import TestTimeSettings


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


class PredictionsManifest(ManifestBase):
    kind: Literal["predictions"] = "predictions"
    schema_version: Literal[1] = 1
    params: InferParams
    summary: InferSummary
    class_names: list[str]
    base_classes: list[int]
    novel_classes: list[int]
    ignore_index: int
    label_dtype: Literal["uint8", "uint16"]
