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

from typing import NamedTuple

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


class SharedPoints(NamedTuple):
    """Points of N maps drawn from S shared draw sets (see :func:`shared_uncertain_points`)."""

    drawn: Tensor  #: (S, D, 2): each draw set's candidates, then its uniform points
    draw_of: Tensor  #: (N,): the draw set of each map
    picks: Tensor  #: (N, count): which of its set's D points each map uses
    coords: Tensor  #: (N, count, 2): those points

    def read(self, values: Tensor) -> Tensor:
        """Per map, its points' values out of values (S, D) read at every point of each draw
        set (e.g. ``point_sample(set_maps, drawn)``) -> (N, count)."""
        return values.flatten()[self.draw_of[:, None] * values.shape[1] + self.picks]


def shared_uncertain_points(
    logits: Tensor, draw_of: Tensor, draws: int, count: int, *, oversample_ratio: float, importance_ratio: float,
    generator: torch.Generator,
) -> SharedPoints:
    """Points for N logit maps (N, h, w): the least certain of the oversampled candidates plus
    uniform ones, ``count`` per map, drawn from ``draws`` draw sets: map i uses set ``draw_of[i]``
    (``torch.arange(N)`` for a set of its own per map). Maps that predict the same target (one
    target's matches in every decoder layer) share its candidates and uniform points; each still
    keeps the candidates where it is itself least certain. A set's points can then be read once in
    the target and handed to each of its maps (:meth:`SharedPoints.read`)."""
    candidates = max(int(count * oversample_ratio), count)
    important = min(int(count * importance_ratio), count)
    # One draw for the candidates and the uniform points; the loss averages over points, so the
    # kept candidates need no order (an unsorted top-k is half the work of a sorted one).
    drawn = torch.rand((draws, candidates + count - important, 2), generator=generator).to(logits.device)
    with torch.no_grad():
        uncertainty = -point_sample(logits.detach(), drawn[draw_of, :candidates]).abs()  # (N, candidates)
        chosen = uncertainty.topk(important, dim=1, sorted=False).indices
    uniform = torch.arange(candidates, drawn.shape[1], device=logits.device).expand(len(draw_of), -1)
    picks = torch.cat((chosen, uniform), dim=1)
    coords = drawn.flatten(0, 1)[draw_of[:, None] * drawn.shape[1] + picks]
    return SharedPoints(drawn, draw_of, picks, coords)
