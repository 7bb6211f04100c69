"""Manifest of a model artifact: resolved training settings, classes, and the weights' digest."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from simformer_cli.artifacts.manifest import Frozen, ManifestBase
from simformer_cli.data.source import ignore_index_for
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
    ignore_index: int = Field(ge=1, le=65535)
    label_sources: list[str] = Field(min_length=1, description="the labels this training read, e.g. the split's "
                                     "weak train labels and image-level labels, its full labels (oracle), pseudo labels")
    weights_file: Literal["weights.safetensors"] = WEIGHTS_FILE
    weights_sha256: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")

    # Field validators (not one for the whole model) so that a refusal names its field; the
    # classes, the network's output and the ignore value must agree, so that a forged manifest with
    # a valid digest is refused here, not deep inside a stage.
    @field_validator("class_names")
    @classmethod
    def _classes_fit_the_network(cls, names: list[str], info: ValidationInfo) -> list[str]:
        params = info.data.get("params")
        if params is not None and params.settings.model.num_classes != len(names):
            raise ValueError(f"the network has {params.settings.model.num_classes} classes, "
                             f"class_names lists {len(names)}")
        return names

    @field_validator("novel_classes")
    @classmethod
    def _classes_partition(cls, novel: list[int], info: ValidationInfo) -> list[int]:
        names, base = info.data.get("class_names"), info.data.get("base_classes")
        if names is not None and base is not None and (
                set(base) & set(novel) or set(base) | set(novel) != set(range(len(names)))):
            raise ValueError("base_classes and novel_classes must partition 0..K-1")
        return novel

    @field_validator("ignore_index", mode="before")
    @classmethod
    def _ignore_is_an_integer(cls, ignore: object) -> object:
        if not isinstance(ignore, int) or isinstance(ignore, bool):  # 1e30 would fail in a stranger way
            raise ValueError(f"ignore_index {ignore!r} is not an integer")
        return ignore

    @field_validator("ignore_index")
    @classmethod
    def _ignore_value(cls, ignore: int, info: ValidationInfo) -> int:
        names = info.data.get("class_names")
        if names is not None and ignore != ignore_index_for(len(names)):
            raise ValueError(f"ignore_index {ignore} is not the ignore value of {len(names)} classes "
                             f"({ignore_index_for(len(names))})")
        return ignore
