"""The CAM network: the preset's backbone, a class-activation head and a pixel-affinity head.

Why stride 16 for the CAMs: res5 alone (stride 32) is a 4x4 grid on the tiny preset's 128-pixel
images, where one cell mixes several shapes; res4 keeps twice the resolution and res5, upsampled
onto it, brings the wider receptive field that textures at the coarse scale need. A finer CAM would
only add interpolation: boundaries come from the random walk on the stride-4 affinity, which is what
that head is for.

Why log-sum-exp pooling: with a bias-free 1x1 classifier the image-level logit is a pooled mean of
the class's activation map, so the map is the per-position evidence the classifier was trained on.
The objective also asks every base-labelled cell to score low for every class but its own
(``losses.base_pixel_loss``); under plain averaging a class covering a fifth of the image could
then only score high by raising the cells that loss pushes down. Log-sum-exp (sharpness 1) is the
mean while the maps are flat and leans towards the maximum once a region stands out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simformer_cli.model.backbone import LEVELS, ResNet, TinyBackbone, build_backbone
from simformer_cli.settings.cam import CamSettings
from simformer_cli.settings.model import ModelSettings

CAM_STRIDE = 16
AFFINITY_STRIDE = 4


def _conv_norm_relu(in_channels: int, out_channels: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.GroupNorm(groups, out_channels),
                         nn.ReLU(inplace=True))


class CamHead(nn.Module):
    """res4 (stride 16) + res5 upsampled onto it -> 1x1 projection -> bias-free 1x1 classifier."""

    def __init__(self, res4_channels: int, res5_channels: int, dim: int, groups: int, num_classes: int) -> None:
        super().__init__()
        self.project = _conv_norm_relu(res4_channels + res5_channels, dim, groups)
        self.classifier = nn.Conv2d(dim, num_classes, 1, bias=False)

    def forward(self, res4: Tensor, res5: Tensor) -> Tensor:
        res5 = F.interpolate(res5, size=res4.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.project(torch.cat([res4, res5], dim=1)))


class AffinityHead(nn.Module):
    """Each level res2..res5 -> 1x1 conv, all upsampled to stride 4, concatenated -> 1x1 embedding.

    Shallow levels place boundaries, deep ones tell textures apart; both decide whether two nearby
    pixels belong to the same region.
    """

    def __init__(self, channels: dict[str, int], dim: int, groups: int) -> None:
        super().__init__()
        self.levels = nn.ModuleDict({level: _conv_norm_relu(channels[level], dim, groups) for level in LEVELS})
        self.embed = nn.Conv2d(dim * len(LEVELS), dim, 1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        size = features["res2"].shape[-2:]
        parts = [F.interpolate(self.levels[level](features[level]), size=size, mode="bilinear", align_corners=False)
                 for level in LEVELS]
        return self.embed(torch.cat(parts, dim=1))


class CamNet(nn.Module):
    """Normalised images (B, 3, H, W), H and W multiples of 32 ->

    - "cams" (B, K, H/16, W/16): class activation maps (logits per position; their mean is the
      image-level logit);
    - "embedding" (B, D, H/4, W/4): the per-pixel affinity embedding.
    """

    def __init__(self, *, backbone: ResNet | TinyBackbone, cam_head: CamHead, affinity_head: AffinityHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.cam_head = cam_head
        self.affinity_head = affinity_head

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        features = self.backbone(images)
        return {"cams": self.cam_head(features["res4"], features["res5"]),
                "embedding": self.affinity_head(features)}


def build_cam_model(model: ModelSettings, cam: CamSettings) -> CamNet:
    """The CAM network over ``model``'s backbone and ``model.num_classes`` classes."""
    backbone = build_backbone(model.backbone, norm=model.backbone_norm, tiny_channels=model.tiny_channels)
    channels = backbone.out_channels
    return CamNet(
        backbone=backbone,
        cam_head=CamHead(channels["res4"], channels["res5"], cam.feature_dim, cam.norm_groups, model.num_classes),
        affinity_head=AffinityHead(channels, cam.affinity_dim, cam.norm_groups),
    )
