"""Manifest of a model artifact: resolved training settings, classes, and the weights' digest."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from simformer_cli.artifacts.manifest import Frozen, ManifestBase
from simformer_cli.training.settings import TrainSettings

WEIGHTS_FILE = "weights.safetensors"


class TrainParams(Frozen):
    settings: TrainSettings
    backbone_weights_sha256: str | None = None


class TrainSummary(Frozen):
    steps: int = Field(ge=0)
    resumed_from: int = Field(ge=0)
    seconds: float
    images_per_second: float
    final_losses: dict[str, float]
    device: str
    world_size: int


class ModelManifest(ManifestBase):
    kind: Literal["model"] = "model"
    schema_version: Literal[1] = 1
    stage: Literal["train", "retrain"]
    params: TrainParams
    summary: TrainSummary
    class_names: list[str]
    base_classes: list[int]
    novel_classes: list[int]
    ignore_index: int
    label_sources: list[str] = Field(min_length=1, description="the labels this training read, e.g. the split's "
                                     "weak train labels and image-level labels, its full labels (oracle), pseudo labels")
    weights_file: Literal["weights.safetensors"] = WEIGHTS_FILE
    weights_sha256: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
