"""What the built-in synthetic dataset looks like (``data.synthetic`` draws it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Classes the generator can tell apart: 12 colours x 6 textures, one pair each.
MAX_CLASSES = 72


class SyntheticSettings(BaseModel):
    """What the synthetic dataset looks like. Equal settings and GENERATOR_VERSION give equal bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, ge=0, lt=2**63)
    num_classes: int = Field(16, ge=2, le=MAX_CLASSES)
    train_images: int = Field(1500, ge=1, le=999_999)
    val_images: int = Field(300, ge=1, le=999_999)
    # Held out for reporting: its images come from their own random streams (subset 2), so they
    # never change with the train/val counts and nothing tuned on val has seen them.
    test_images: int = Field(300, ge=0, le=999_999)
    image_size: int = Field(128, ge=32, le=1024)
    min_regions: int = Field(2, ge=1, le=16)
    max_regions: int = Field(6, ge=1, le=16)
    unlabelled_fraction: float = Field(0.03, ge=0.0, le=0.25)
    # Co-occurrence: class id -> the share of images that contain it. A listed class is drawn for an
    # image by its own coin flip (and never otherwise); the other regions come from the unlisted
    # classes as usual. Street scenes are like this: trees, cars and people in nearly every image.
    class_presence: dict[int, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _regions_ordered(self) -> SyntheticSettings:
        if self.min_regions > self.max_regions:
            raise ValueError(f"min_regions ({self.min_regions}) exceeds max_regions ({self.max_regions})")
        for class_id, share in self.class_presence.items():
            if not 1 <= class_id < self.num_classes:
                raise ValueError(f"class_presence: class {class_id} is not one of 1..{self.num_classes - 1} "
                                 "(background is in every image)")
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"class_presence: {share} for class {class_id} is not a share between 0 and 1")
        if len(self.class_presence) > self.num_classes - 2:
            raise ValueError("class_presence: leave at least one class unlisted")
        return self
