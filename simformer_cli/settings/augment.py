"""How training crops are made: resize range, crop size, jitter and flip; the paper's two recipes
and the tiny preset's."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MAX_SIDE = 16384


class AugmentSettings(BaseModel):
    # Sides in pixels; the upper bounds refuse absurd values (a forged manifest, a typo in --set).
    model_config = ConfigDict(extra="forbid", frozen=True)

    short_sides: tuple[Annotated[int, Field(ge=1, le=MAX_SIDE)], ...] = Field(min_length=1, max_length=1000)
    max_long_side: int = Field(ge=16, le=MAX_SIDE)
    crop: int = Field(ge=16, le=MAX_SIDE)
    color_jitter: bool = True
    flip: bool = True


ADE20K_AUGMENT = AugmentSettings(
    short_sides=tuple(int(512 * s) for s in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0)),
    max_long_side=2048,
    crop=512,
)
COCO_AUGMENT = AugmentSettings(short_sides=tuple(range(320, 961, 64)), max_long_side=2560, crop=640)


def tiny_augment(image_size: int) -> AugmentSettings:
    """Scale jitter 0.75x-1.25x around the dataset's own size, crops of that size."""
    sides = tuple(int(round(image_size * s)) for s in (0.75, 0.875, 1.0, 1.125, 1.25))
    return AugmentSettings(short_sides=sides, max_long_side=4 * image_size, crop=image_size)
