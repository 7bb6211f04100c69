"""Settings of a training run and the two presets (``tiny`` for CPU minutes, ``paper`` for GPUs).

A preset resolves to a complete :class:`TrainSettings`; command-line options override single
fields; the fully resolved object is what the model manifest records, so every run can be
reproduced from its manifest alone.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from simformer_cli.settings.augment import ADE20K_AUGMENT, COCO_AUGMENT, AugmentSettings, tiny_augment
from simformer_cli.settings.cam import CamSettings, paper_cam_settings, tiny_cam_settings
from simformer_cli.settings.model import LossSettings, ModelSettings, paper_model_settings, tiny_model_settings

PresetName = Literal["tiny", "paper"]
#: simformer: weak labels + image-level novel labels (the method); supervised: the labels given
#: (retrain's pseudo labels) with no novel-specific loss; oracle: the split's full train labels,
#: novel pixels included (an upper bound for benchmarks, not a weak-shot method); cam: the CAM
#: baseline (a classifier whose refined class activation maps become pseudo labels, see ``cam``).
Method = Literal["simformer", "supervised", "oracle", "cam"]


#: Seeds seed torch (64-bit) and numpy; one range for every seed option: 0 to 2**63 - 1.
MAX_SEED = 2**63 - 1
#: Training steps: far beyond any schedule (the paper's is 160k), a bound against typos.
MAX_ITERS = 100_000_000
#: Images in a global batch: the paper's is 8 (16 in MaskFormer's ADE20K recipe).
MAX_BATCH_SIZE = 4096
#: Base learning rate: AdamW's is around 1e-4 to 1e-3.
MAX_LR = 10.0
#: Images in one forward pass; a larger global batch is cut into several micro-batches.
MAX_MICRO_BATCH = 16


class OptimSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    lr: float = Field(1e-4, gt=0, le=MAX_LR)
    weight_decay: float = Field(1e-4, ge=0, le=10.0)
    backbone_lr_multiplier: float = Field(0.1, ge=0, le=1000.0)
    poly_power: float = Field(0.9, ge=0, le=100.0)
    grad_clip_norm: float | None = Field(0.01, gt=0, le=1e6, description="full-model gradient norm clip; None = off")


class TrainSettings(BaseModel):
    """Everything that changes the trained weights (devices and worker counts excepted)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    preset: PresetName
    method: Method = "simformer"
    iters: int = Field(ge=1, le=MAX_ITERS)
    batch_size: int = Field(ge=1, le=MAX_BATCH_SIZE, description="global batch (images per step, all devices together)")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    # image: a novel class is known for the whole image (weak labels; the default). crop: for each
    # training crop, the novel classes with pixels inside it, read from the full train labels, as
    # the released code does (paper parity, though it leaks where novel pixels are).
    image_labels: Literal["image", "crop"] = "image"
    model: ModelSettings
    loss: LossSettings
    optim: OptimSettings
    augment: AugmentSettings
    cam: CamSettings | None = Field(None, description="the CAM baseline's heads and random walk (method cam only)")

    @model_validator(mode="after")
    def _pairs_fit(self) -> TrainSettings:
        if self.loss.needs_pairs and self.batch_size % 2:
            raise ValueError(f"batch size {self.batch_size} must be even: similarity transfer trains on image pairs")
        if self.image_labels == "crop" and self.method not in ("simformer", "cam"):
            raise ValueError(f"image_labels crop applies to weak-shot training (method simformer or cam), "
                             f"not to method {self.method}, whose targets all have masks")
        if (self.method == "cam") != (self.cam is not None):
            raise ValueError("cam settings are given with method cam, and only then")
        if self.method == "cam" and self.loss.regularizer != "none":
            raise ValueError(f"loss.regularizer {self.loss.regularizer} (--regularizer) applies to the MaskFormer "
                             "methods, not to method cam, which has its own objective; drop it or use --method simformer")
        return self


def accumulation_steps(batch_size: int, world_size: int) -> int:
    """Micro-batches per process and step: the fewest (a power of two) that keep each at most
    MAX_MICRO_BATCH images; the global batch is cut into ``world_size`` times as many."""
    accumulation = 1
    while batch_size // (world_size * accumulation) > MAX_MICRO_BATCH:
        accumulation *= 2
    return accumulation


def batch_fits(batch_size: int, world_size: int, pairs: bool) -> bool:
    """Whether the global batch cuts into equal micro-batches (of whole image pairs with ``pairs``)."""
    parts = world_size * accumulation_steps(batch_size, world_size)
    return batch_size % parts == 0 and not (pairs and (batch_size // parts) % 2)


def batch_problem(batch_size: int, world_size: int, pairs: bool) -> str | None:
    """Why this global batch cannot be trained (None if it can), naming the nearest sizes that work."""
    if batch_fits(batch_size, world_size, pairs):
        return None
    below = next((b for b in range(batch_size - 1, 0, -1) if batch_fits(b, world_size, pairs)), None)
    above = next((b for b in range(batch_size + 1, 2 * batch_size + 2 * world_size + 2)
                  if batch_fits(b, world_size, pairs)), None)
    parts = world_size * accumulation_steps(batch_size, world_size)
    nearest = [str(b) for b in (below, above) if b is not None and b <= MAX_BATCH_SIZE]
    processes = f" over {world_size} processes" if world_size > 1 else ""
    return (f"cannot be cut into {parts} equal micro-batches{' of whole image pairs' if pairs else ''}{processes} "
            f"(at most {MAX_MICRO_BATCH} images each); "
            + (f"the nearest sizes that work are {' and '.join(nearest)}" if len(nearest) > 1
               else f"the nearest size that works is {nearest[0]}"))


def preset_settings(
    preset: PresetName, *, num_classes: int, dataset: str, image_size: int, method: Method = "simformer"
) -> TrainSettings:
    """The preset for a split. The paper has two recipes (loss weights 0.2/0.5, ADE20K's
    augmentation and 160k steps; COCO-Stuff-10K's 0.15/0.1, its augmentation and 60k steps):
    COCO-Stuff-10K takes its own, every other dataset ADE20K's."""
    coco = dataset == "coco-stuff-10k"
    comp, distill = (0.15, 0.1) if coco else (0.2, 0.5)
    weak_shot = method == "simformer"  # the CAM baseline has its own objective: no SimFormer terms, no pairs
    loss = LossSettings(complementary=weak_shot, complementary_weight=comp, similarity=weak_shot,
                        distillation=weak_shot, distill_weight=distill)
    if preset == "paper":
        return TrainSettings(
            preset="paper", method=method, iters=60_000 if coco else 160_000, batch_size=8,
            model=paper_model_settings(num_classes), loss=loss, optim=OptimSettings(),
            augment=COCO_AUGMENT if coco else ADE20K_AUGMENT,
            cam=paper_cam_settings() if method == "cam" else None,
        )
    # A quarter of the paper's pixel pairs: on a CPU the similarity net then costs as much as the
    # rest of the criterion. Class cost 5 in the matching (the paper: 1): matched by masks alone,
    # queries settle on classes slowly. Mask losses on 1024 points per mask (Mask2Former's point
    # loss) instead of every pixel: better novel mIoU at a fraction of the backward's cost.
    # Measurements: BENCHMARKS.md, "Training step" and docs/benchmarks-history.md.
    tiny_loss = loss.model_copy(update={"base_points": 50, "base_positive_points": 40, "novel_points": 50,
                                        "match_class_weight": 5.0, "mask_points": 1024})
    return TrainSettings(
        preset="tiny", method=method, iters=1000, batch_size=8,
        model=tiny_model_settings(num_classes), loss=LossSettings.model_validate(tiny_loss.model_dump()),
        # No clipping: a full-model clip held the class head back on short runs.
        optim=OptimSettings(lr=1e-3, weight_decay=1e-4, backbone_lr_multiplier=1.0, grad_clip_norm=None),
        augment=tiny_augment(min(image_size, 256) // 32 * 32 or 32),
        cam=tiny_cam_settings() if method == "cam" else None,
    )
