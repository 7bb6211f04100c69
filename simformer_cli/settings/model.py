"""Typed settings of the segmentation model and of its training objective, plus the two presets.

``ModelSettings`` fixes the network (what a checkpoint needs to be rebuilt); ``LossSettings`` fixes
the SimFormer objective (what a training run needs besides the network). Both are frozen pydantic
models with ``extra="forbid"`` so a typo in a manifest is an error, not a silently ignored key.
Defaults follow the official ADE20K configuration of SimFormer (NeurIPS 2022); COCO-Stuff-10K uses
``complementary_weight=0.15`` and ``distill_weight=0.1``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializationInfo, SerializerFunctionWrapHandler, model_serializer, model_validator

Channels = Annotated[int, Field(ge=8, le=4096)]
MAX_WEIGHT = 1000.0  # of any loss or matching-cost weight
MAX_POINTS = 1_000_000  # sampled points per mask or image
#: none: the SimFormer objective alone; dfr: plus the regularized loss of model/regularizer.py.
Regularizer = Literal["none", "dfr"]


class ModelSettings(BaseModel):
    """Shape of a MaskFormer: backbone, FPN pixel decoder and DETR transformer decoder.

    Upper bounds are far above any real network (the paper's is 256-d, 100 queries, 6 layers): they
    only refuse absurd values, e.g. in a forged manifest, before anything is allocated.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    num_classes: int = Field(ge=1, le=65534, description="K, the number of real classes (no-object excluded)")
    backbone: Literal["resnet50", "resnet101", "tiny"] = "resnet50"
    # FrozenBN is right with ImageNet weights; from-scratch ResNets need live batch statistics.
    backbone_norm: Literal["frozen_bn", "batch_norm"] = "frozen_bn"
    tiny_channels: tuple[Channels, Channels, Channels, Channels] = (16, 32, 64, 128)
    conv_dim: int = Field(256, ge=8, le=4096, description="channels inside the FPN pixel decoder")
    mask_dim: int = Field(256, ge=8, le=4096, description="channels of the stride-4 mask features")
    norm_groups: int = Field(32, ge=1, le=1024, description="GroupNorm groups in the pixel decoder")
    hidden_dim: int = Field(256, ge=8, le=4096)
    num_queries: int = Field(100, ge=1, le=1000)
    dec_layers: int = Field(6, ge=1, le=64)
    nheads: int = Field(8, ge=1, le=64)
    dim_feedforward: int = Field(2048, ge=1, le=65536)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    # What the decoder's queries attend to (MaskFormer's TRANSFORMER_IN_FEATURE): a backbone level,
    # or the stride-4 per-pixel embeddings. res5 is the paper's; on 128-pixel images it is a 4x4
    # grid whose cells mix several regions, too coarse to name the textures of the synthetic data.
    transformer_in_feature: Literal["res5", "res4", "res3", "pixel_embedding"] = "res5"
    # Off in the paper (MaskFormer). On, each decoder layer after the first attends only inside the
    # previous layer's mask of the query (Mask2Former's masked attention), so a query reads the
    # features of its own region: the class head then learns in hundreds of steps, not tens of thousands.
    masked_attention: bool = False

    @model_validator(mode="after")
    def _check_divisibility(self) -> ModelSettings:
        if self.hidden_dim % self.nheads:
            raise ValueError(f"hidden_dim {self.hidden_dim} is not divisible by nheads {self.nheads}")
        if self.hidden_dim % 2:
            raise ValueError("hidden_dim must be even (half of it encodes y, half x)")
        if self.conv_dim % self.norm_groups:
            raise ValueError(f"conv_dim {self.conv_dim} is not divisible by norm_groups {self.norm_groups}")
        if self.backbone == "tiny" and any(c % 8 for c in self.tiny_channels):
            raise ValueError("tiny_channels must be multiples of 8 (GroupNorm with 8 groups)")
        return self


class LossSettings(BaseModel):
    """Weights and switches of the SimFormer objective (matching, set losses, complementary loss,
    similarity transfer, distillation) and of the optional regularized loss (off by default).

    Weights are finite and at most 1000, point counts at most a million: bounds that refuse absurd
    values (a forged manifest, a typo in ``--set``) and nothing a real run uses.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # Hungarian matching cost (section 4.1).
    match_class_weight: float = Field(1.0, ge=0.0, le=MAX_WEIGHT)
    match_focal_weight: float = Field(20.0, ge=0.0, le=MAX_WEIGHT)
    match_dice_weight: float = Field(1.0, ge=0.0, le=MAX_WEIGHT)
    # Set prediction losses (sections 4.2, 4.3); every decoder layer.
    class_weight: float = Field(1.0, ge=0.0, le=MAX_WEIGHT)
    mask_focal_weight: float = Field(20.0, ge=0.0, le=MAX_WEIGHT)
    dice_weight: float = Field(1.0, ge=0.0, le=MAX_WEIGHT)
    no_object_weight: float = Field(0.1, ge=0.0, le=MAX_WEIGHT)
    focal_alpha: float = Field(0.25, ge=0.0, le=1.0)
    focal_gamma: float = Field(2.0, ge=0.0, le=100.0)
    deep_supervision: bool = True
    # None: focal and dice over every pixel at input resolution (MaskFormer, the paper). N: over N
    # points per mask, mostly where the prediction is least certain (Mask2Former's point loss), for
    # the set losses and the complementary loss alike; see model/points.py.
    mask_points: int | None = Field(None, ge=1, le=MAX_POINTS)
    point_oversample_ratio: float = Field(3.0, ge=1.0, le=100.0)
    point_importance_ratio: float = Field(0.75, ge=0.0, le=1.0)
    # Complementary loss (section 4.4); every decoder layer.
    complementary: bool = True
    complementary_weight: float = Field(0.2, ge=0.0, le=MAX_WEIGHT)
    complementary_floor_logit: float = Field(-2.9444, ge=-100.0, le=100.0)
    # Novel partition (ours, for novel classes that appear together; off by default): in each image
    # with novel targets, the masks matched to them must not claim the same pixels (overlap) and
    # each must claim part of the non-base region (presence: the mean of its highest
    # partition_presence_share probabilities there). Every decoder layer, at the masks' resolution.
    partition: bool = False
    partition_overlap_weight: float = Field(1.0, ge=0.0, le=MAX_WEIGHT)
    partition_presence_weight: float = Field(0.5, ge=0.0, le=MAX_WEIGHT)
    partition_presence_share: float = Field(0.01, gt=0.0, le=1.0)
    # Image-label multiple-instance term on the novel classes' semantic scores (ours, off by default):
    # in each image with novel targets, a novel class absent from its image-level label scores
    # near 0 on every non-base pixel (-log(1 - S)), and each present one scores near 1 on its best
    # novel_mil_share of them (-log of their mean). Last decoder layer, at the masks' resolution.
    novel_mil: bool = False
    novel_mil_weight: float = Field(1.0, ge=0.0, le=MAX_WEIGHT)
    novel_mil_share: float = Field(0.05, gt=0.0, le=1.0)
    # Naming by elimination across images (ours, off by default; model/elimination.py): per novel
    # class, a memory of non-base pixel features from images whose label lacks it; in images that
    # have it, the sampled pixels most alike that memory are pushed off the class, the least alike
    # towards it. Last decoder layer.
    elimination: bool = False
    elimination_weight: float = Field(1.0, ge=0.0, le=MAX_WEIGHT)
    elimination_memory: int = Field(2048, ge=64, le=1_000_000, description="features kept per novel class")
    elimination_points: int = Field(128, ge=2, le=4096, description="non-base pixels sampled per image")
    elimination_share: float = Field(0.25, gt=0.0, le=0.5)
    # The least alike share pushed towards the class (None: elimination_share; 0: none, only the
    # push off the class). A class covering less of the non-base region than this share has
    # other classes' pixels pushed to it.
    elimination_naming_share: float | None = Field(None, ge=0.0, le=0.5)
    # Pixel-pixel similarity net and its base loss (section 4.5); final layer, image pairs.
    similarity: bool = True
    sim_weight: float = Field(1.0, ge=0.0, le=MAX_WEIGHT)
    base_points: int = Field(100, ge=2, le=MAX_POINTS)
    base_positive_points: int = Field(80, ge=1, le=MAX_POINTS)
    balance_window: int = Field(25, ge=1, le=1_000_000, description="iterations in the class-balance running counts")
    # Distillation of the similarity net into novel-class score vectors (section 4.6).
    distillation: bool = True
    distill_weight: float = Field(0.5, ge=0.0, le=MAX_WEIGHT)
    distill_loss: Literal["cce", "ce"] = "cce"
    distill_pairs: Literal["cross_image", "intra_image_released"] = "cross_image"
    novel_points: int = Field(100, ge=1, le=MAX_POINTS)
    # Regularized loss (the DFR route, model/regularizer.py): predictions of pixels alike in colour,
    # place and deep features must agree; last layer only, on dfr_points sampled pixels per image.
    regularizer: Regularizer = "none"
    # Chosen on the quality benchmark's tuning splits (BENCHMARKS.md, "weight of the DFR regularizer").
    dfr_weight: float = Field(1.0, ge=0.0, le=MAX_WEIGHT)
    # unlabelled: pairs of pixels no target mask covers (novel and ignore pixels); all: any non-padding pixels.
    dfr_pixels: Literal["unlabelled", "all"] = "unlabelled"
    dfr_points: int = Field(256, ge=2, le=4096, description="sampled pixels per image; all their pairs are used")
    dfr_sigma_rgb: float = Field(15.0, gt=0.0, le=1000.0, description="colour bandwidth, 0-255 RGB units")
    dfr_sigma_xy: float = Field(40.0, gt=0.0, le=100_000.0, description="position bandwidth, input pixels")
    # features: a Gaussian over the detached, unit-length mask features; similarity: the similarity
    # net's same-class probability (needs similarity=True); none: colour and position alone.
    dfr_deep_kernel: Literal["features", "similarity", "none"] = "features"
    dfr_sigma_feature: float = Field(0.5, gt=0.0, le=100.0, description="feature bandwidth (unit features: distances 0-2)")

    @model_validator(mode="after")
    def _check_consistency(self) -> LossSettings:
        if self.base_positive_points >= self.base_points:
            raise ValueError("base_positive_points must be smaller than base_points")
        if self.distillation and not self.similarity:
            raise ValueError("distillation needs similarity=True: the similarity net is its teacher")
        if self.regularizer == "dfr" and self.dfr_deep_kernel == "similarity" and not self.similarity:
            raise ValueError("dfr_deep_kernel similarity needs similarity=True (the similarity net is the kernel); "
                             "use dfr_deep_kernel=features or keep the similarity net on")
        return self

    @model_serializer(mode="wrap")
    def _omit_options_when_off(self, handler: SerializerFunctionWrapHandler,
                               info: SerializationInfo) -> dict[str, Any]:
        """Without the regularizer or a naming term (partition, novel MIL, elimination) their settings are left out, so that
        every manifest, digest and resume key of a run that does not use them stays what it was
        before the options existed (``context={"every_setting": True}`` keeps them: what ``--set``
        may name)."""
        data = handler(self)
        if (info.context or {}).get("every_setting"):
            return data
        for switch, (prefix, on) in self.optional_terms().items():
            if not on:
                for key in [key for key in data if key == switch or key.startswith(prefix)]:
                    del data[key]
        return data

    def optional_terms(self) -> dict[str, tuple[str, bool]]:
        """Each optional term's switch -> (the prefix of its settings, whether it is on)."""
        return {"regularizer": ("dfr_", self.regularizer != "none"), "partition": ("partition_", self.partition),
                "novel_mil": ("novel_mil_", self.novel_mil), "elimination": ("elimination_", self.elimination)}

    @property
    def needs_pairs(self) -> bool:
        """Whether the batch must be laid out as consecutive image pairs [a0, b0, a1, b1, ...]."""
        return self.similarity


def tiny_model_settings(num_classes: int) -> ModelSettings:
    """A MaskFormer small enough for a training step well under a second on two CPU cores.

    Batch 8 at 128x128: a 4-stage conv backbone (24/48/96/192 channels), 64-d features,
    3 decoder layers and 16 queries; no dropout, tiny runs are too short to need it. The queries
    attend to the stride-4 pixel embeddings with masked attention: on 128-pixel images the paper's
    res5 memory is a 4x4 grid, too coarse to name the segments (BENCHMARKS.md, "Quality").
    """
    return ModelSettings(
        num_classes=num_classes,
        backbone="tiny",
        tiny_channels=(24, 48, 96, 192),
        conv_dim=64,
        mask_dim=64,
        norm_groups=8,
        hidden_dim=64,
        num_queries=16,
        dec_layers=3,
        nheads=4,
        dim_feedforward=128,
        dropout=0.0,
        transformer_in_feature="pixel_embedding",
        masked_attention=True,
    )


def paper_model_settings(num_classes: int) -> ModelSettings:
    """The published configuration: ResNet-50, 256-d, 6 decoder layers, 100 queries, 8 heads."""
    return ModelSettings(
        num_classes=num_classes,
        backbone="resnet50",
        backbone_norm="frozen_bn",
        conv_dim=256,
        mask_dim=256,
        norm_groups=32,
        hidden_dim=256,
        num_queries=100,
        dec_layers=6,
        nheads=8,
        dim_feedforward=2048,
        dropout=0.1,
    )
