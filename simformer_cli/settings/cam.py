"""Settings of the CAM baseline: its two heads, its losses and how its CAMs become pseudo labels.

The backbone is the preset's (``ModelSettings.backbone``, ``tiny_channels``, ``backbone_norm``);
everything else the CAM network, its objective and its random walk need is here, recorded in the
model manifest under ``settings.cam``. The random walk and the score floor are settings of the
model rather than of ``pseudolabel`` so that a model artifact fixes its pseudo labels; changing
them with ``--set cam.walk_iterations=...`` means training again.

Defaults: the per-cell loss on base cells with log-sum-exp pooling, a 16-step walk and no score
floor gave the best pseudo labels on the default synthetic split (docs/benchmarks-history.md, "CAM").
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class CamSettings(BaseModel):
    # Upper bounds refuse absurd values (a forged manifest, a typo in --set), nothing a real run uses.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    feature_dim: int = Field(256, ge=8, le=4096, description="channels of the stride-16 feature the classifier reads")
    pool_sharpness: float = Field(1.0, gt=0.0, le=1000.0, description="r of the log-sum-exp pooling of CAMs into image logits")
    base_pixel_weight: float = Field(1.0, ge=0.0, le=1000.0, description="weight of the CAMs' per-cell loss on base cells; 0 = off")
    affinity_dim: int = Field(128, ge=8, le=4096, description="channels of the stride-4 affinity embedding")
    norm_groups: int = Field(32, ge=1, le=1024, description="GroupNorm groups in both heads")
    affinity_radius: int = Field(5, ge=1, le=64, description="pairs closer than this many stride-4 cells (training and walk)")
    affinity_weight: float = Field(1.0, ge=0.0, le=1000.0, description="weight of the affinity loss beside the classification loss")
    walk_beta: float = Field(8.0, gt=0.0, le=1000.0, description="affinities are raised to this power before normalising")
    walk_iterations: int = Field(16, ge=0, le=10_000, description="random-walk steps (each reaches affinity_radius cells further)")
    min_score: float = Field(0.0, ge=0.0, le=1.0,
                             description="pseudolabel's default --min-score: refined novel scores (peak 1) below it stay ignore")

    @model_validator(mode="after")
    def _check_groups(self) -> CamSettings:
        for name in ("feature_dim", "affinity_dim"):
            if getattr(self, name) % self.norm_groups:
                raise ValueError(f"{name} {getattr(self, name)} is not divisible by norm_groups {self.norm_groups}")
        return self


def tiny_cam_settings() -> CamSettings:
    """Heads as wide as the tiny MaskFormer's 64-d features."""
    return CamSettings(feature_dim=64, affinity_dim=32, norm_groups=8)


def paper_cam_settings() -> CamSettings:
    return CamSettings()
