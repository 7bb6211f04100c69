"""Pixel affinities within a radius, and the random walk that spreads CAM scores along them.

All maps here live on the stride-4 grid (h, w). A pair of cells (i, j) with j = i + (dy, dx) and
dy^2 + dx^2 < radius^2 has the affinity a_ij = exp(-mean_d |e_i - e_j|) of their embeddings, in
(0, 1], 1 for a cell with itself and symmetric by construction. The walk's transition from cell i
is a_ij ** beta normalised over i's neighbours (itself included, cells outside the map excluded), so
every row sums to 1 and each step replaces a cell's scores by a convex combination of its
neighbours' scores: scores spread inside regions of high affinity and stop at their borders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

Offset = tuple[int, int]


def disk_offsets(radius: int) -> list[Offset]:
    """Every (dy, dx) with dy^2 + dx^2 < radius^2, (0, 0) first."""
    span = range(-radius + 1, radius)
    return [(0, 0)] + [(dy, dx) for dy in span for dx in span if 0 < dy * dy + dx * dx < radius * radius]


def half_disk_offsets(radius: int) -> list[Offset]:
    """One offset of each unordered pair {o, -o} of :func:`disk_offsets`, (0, 0) excluded."""
    return [(dy, dx) for dy, dx in disk_offsets(radius) if dy > 0 or (dy == 0 and dx > 0)]


def shifted(x: Tensor, offset: Offset, fill: float = 0.0) -> Tensor:
    """(..., h, w) -> y with y[..., i, j] = x[..., i + dy, j + dx], ``fill`` where that is outside."""
    dy, dx = offset
    h, w = x.shape[-2:]
    padded = F.pad(x, (abs(dx), abs(dx), abs(dy), abs(dy)), value=fill)
    top, left = abs(dy) + dy, abs(dx) + dx
    return padded[..., top : top + h, left : left + w]


def pair_distance(embedding: Tensor, offset: Offset) -> Tensor:
    """(B, D, h, w) -> (B, h, w): mean absolute embedding difference of each cell and its partner at
    ``offset`` (meaningless where the partner is outside the map: callers mask those)."""
    return (embedding - shifted(embedding, offset)).abs().mean(dim=1)


def inside(shape: tuple[int, int], offset: Offset, device: torch.device) -> Tensor:
    """(h, w) bool: whether each cell's partner at ``offset`` lies inside the map."""
    return shifted(torch.ones(shape, device=device), offset) > 0


def transition(embedding: Tensor, radius: int, beta: float) -> Tensor:
    """(B, D, h, w) -> (B, O, h, w) over :func:`disk_offsets`: a_ij ** beta / sum_j a_ij ** beta.

    Computed as a softmax of -beta * distance, which is the same and never underflows to 0 / 0.
    """
    offsets = disk_offsets(radius)
    shape = tuple(embedding.shape[-2:])
    logits = torch.stack([
        torch.where(inside(shape, o, embedding.device), -beta * pair_distance(embedding, o), -torch.inf)
        for o in offsets], dim=1)
    return logits.softmax(dim=1)


def random_walk(scores: Tensor, transitions: Tensor, radius: int, iterations: int) -> Tensor:
    """(B, C, h, w) scores after ``iterations`` steps of ``transitions`` (B, O, h, w) from :func:`transition`."""
    offsets = disk_offsets(radius)
    for _ in range(iterations):
        scores = sum(transitions[:, k : k + 1] * shifted(scores, o) for k, o in enumerate(offsets))
    return scores
