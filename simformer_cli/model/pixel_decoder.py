"""MaskFormer's ``BasePixelDecoder``: an FPN that turns res2..res5 into stride-4 mask features."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from simformer_cli.model.backbone import LEVELS


def _conv_gn(in_channels: int, out_channels: int, kernel: int, groups: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.GroupNorm(groups, out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasePixelDecoder(nn.Module):
    """Top-down FPN with GroupNorm and no transformer encoder.

    The coarsest level (res5) gets only a 3x3 conv; every finer level adds a 1x1 lateral conv of
    its backbone feature to the nearest-upsampled coarser output and refines the sum with a 3x3
    conv. A last 3x3 conv maps the stride-4 result to ``mask_dim`` channels: the per-pixel
    embeddings that mask logits are dot products with.
    """

    def __init__(self, in_channels: dict[str, int], conv_dim: int, mask_dim: int, norm_groups: int) -> None:
        super().__init__()
        self.levels = tuple(reversed(LEVELS))  # coarse to fine: res5, res4, res3, res2
        self.lateral_convs = nn.ModuleDict()
        self.output_convs = nn.ModuleDict()
        for level in self.levels:
            if level != "res5":
                self.lateral_convs[level] = _conv_gn(in_channels[level], conv_dim, 1, norm_groups, relu=False)
            source = in_channels[level] if level == "res5" else conv_dim
            self.output_convs[level] = _conv_gn(source, conv_dim, 3, norm_groups, relu=True)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # detectron2's c2_xavier_fill: Kaiming-uniform with a=1, zero bias.
                nn.init.kaiming_uniform_(module.weight, a=1)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """{res2 (B, C2, H/4, W/4), ..., res5 (B, C5, H/32, W/32)} -> (B, mask_dim, H/4, W/4)."""
        y = self.output_convs["res5"](features["res5"])
        for level in self.levels[1:]:
            lateral = self.lateral_convs[level](features[level])
            y = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            y = self.output_convs[level](y)
        return self.mask_features(y)
