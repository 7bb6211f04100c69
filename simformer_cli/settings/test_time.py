"""How images are resized for prediction: the test size, the scales, the mirrored views."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from simformer_cli.settings.augment import AugmentSettings

#: Test-time scale factors: at most this many, each at most MAX_SCALE (the ADE20K recipe's largest
#: is 1.875). A view's memory grows with the square of its scale; 40 would need 1600 times more.
MAX_SCALES = 16
MAX_SCALE = 4.0


class TestTimeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    short_side: int = Field(ge=16, le=16384)
    max_long_side: int = Field(ge=16, le=16384)
    scales: tuple[Annotated[float, Field(gt=0, le=MAX_SCALE)], ...] = Field((1.0,), min_length=1, max_length=MAX_SCALES)
    flip: bool = False

    def view_size(self, height: int, width: int, scale: float = 1.0) -> tuple[int, int]:
        """(height, width) of an image's view at ``scale``: short side ``short_side x scale``,
        long side at most ``max_long_side x scale``."""
        short, max_long = self.short_side * scale, int(self.max_long_side * scale)
        factor = min(short / min(height, width), max_long / max(height, width))
        return max(1, int(round(height * factor))), max(1, int(round(width * factor)))

    @classmethod
    def from_training(cls, augment: AugmentSettings, scales: tuple[float, ...], flip: bool) -> TestTimeSettings:
        """A model's own test size: its training crop (512 ADE20K / 640 COCO-Stuff in the paper preset)."""
        return cls(short_side=augment.crop, max_long_side=augment.max_long_side, scales=scales, flip=flip)

