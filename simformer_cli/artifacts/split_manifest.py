"""Manifest of a split artifact: the class lists, how they were chosen, and what was ingested."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from simformer_cli.artifacts.manifest import Frozen, ManifestBase
from simformer_cli.data.synthetic import SyntheticSettings

DatasetName = Literal["synthetic", "ade20k", "coco-stuff-10k", "folder"]
#: train: weak labels; val: the usual validation images; test: held out for reporting (synthetic, or a
#: folder dataset with images/test); holdout: training images held out for tuning (split --holdout).
SubsetName = Literal["train", "val", "test", "holdout"]


class SplitParams(Frozen):
    """Every setting that changes the split artifact."""

    dataset: DatasetName
    selection: Literal["ratio", "official", "explicit"]
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


class SplitManifest(ManifestBase):
    kind: Literal["split"] = "split"
    schema_version: Literal[1] = 1
    params: SplitParams
    summary: SplitSummary
    class_names: list[str]
    base_classes: list[int]
    novel_classes: list[int]
    ignore_index: int
    label_dtype: Literal["uint8", "uint16"]

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
