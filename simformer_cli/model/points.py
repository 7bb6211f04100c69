"""Mask losses on sampled points instead of every pixel (Mask2Former's point loss, an option).

MaskFormer upsamples each matched mask to the input resolution and averages its focal and dice
terms over every pixel; most of that work (and of its backward) is spent on pixels far from any
boundary, where the loss is already small. With ``loss.mask_points = N`` the terms are averaged
over N points per mask instead: ``oversample_ratio * N`` uniform candidates are drawn, the
``importance_ratio * N`` whose prediction is least certain (logit nearest 0) are kept, and the
rest of the N are uniform. Predictions and targets are read at the points by bilinear
interpolation in the same normalised coordinates, so a point between pixels of the target gets
its soft value, as the upsampled prediction would at that place.

All draws come from the caller's CPU ``torch.Generator`` (reproducible on any device); the choice
of points carries no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(maps: Tensor, coords: Tensor) -> Tensor:
    """Bilinear values of maps (N, H, W) at coords (N, P, 2) in [0, 1]^2 as (x, y) -> (N, P).

    Coordinates follow ``align_corners=False``: (0, 0) is the top-left corner of the top-left
    pixel, so the same point reads the same place of a map at any resolution.
    """
    grid = (2 * coords - 1)[:, :, None, :].to(maps.dtype)  # (N, P, 1, 2)
    return F.grid_sample(maps[:, None], grid, mode="bilinear", align_corners=False)[:, 0, :, 0]


def uncertain_points(
    logits: Tensor, count: int, *, oversample_ratio: float, importance_ratio: float, generator: torch.Generator
) -> Tensor:
    """Points for each of N logit maps (N, h, w): the least certain of the oversampled candidates
    plus uniform ones -> coords (N, count, 2) on ``logits``' device."""
    num_maps = logits.shape[0]
    candidates = max(int(count * oversample_ratio), count)
    important = min(int(count * importance_ratio), count)
    # One draw for the candidates and the uniform points; the loss averages over points, so the
    # kept candidates need no order (an unsorted top-k is half the work of a sorted one).
    drawn = torch.rand((num_maps, candidates + count - important, 2), generator=generator).to(logits.device)
    coords, uniform = drawn[:, :candidates], drawn[:, candidates:]
    with torch.no_grad():
        uncertainty = -point_sample(logits.detach(), coords).abs()  # (N, candidates)
        chosen = uncertainty.topk(important, dim=1, sorted=False).indices
    picked = torch.gather(coords, 1, chosen[..., None].expand(-1, -1, 2))
    return torch.cat((picked, uniform), dim=1)
