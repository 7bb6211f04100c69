"""Naming novel classes by elimination across images (ours, off by default: ``loss.elimination``).

When novel classes nearly always appear together, an image-level label says little about which
pixels are which. The images *without* a class still say something: none of their non-base pixels
is that class. This term keeps, per novel class n, a memory of pixel features from the non-base
region of recent training images whose label lacks n (detached, unit-length mask features; a
first-in-first-out ring of ``elimination_memory`` entries, checkpointed with the criterion). In an
image whose label has n, each of ``elimination_points`` sampled non-base pixels is compared with
that memory (its largest cosine similarity to an entry):

- the ``elimination_share`` most alike pixels look like things that are not n: their semantic
  score S_n is pushed towards 0 (-log(1 - S_n));
- the ``elimination_naming_share`` least alike (default: the same share; 0: none) are the likeliest
  n: among the image's novel classes, n is pushed to win there (cross-entropy of the scores
  normalised over the image's novel classes). A class that covers less of the region than this
  share (CamVid's pedestrians, about 4%) gets other classes' pixels pushed to it.

A class whose memory holds fewer than ``MIN_MEMORY`` entries is skipped (nothing to compare with).
The memory is filled after the loss is taken, so an image is never compared with itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Entries a class's memory needs before it is compared with.
MIN_MEMORY = 64


def elimination_terms(similarity: Tensor, scores: Tensor, present: Tensor, share: float,
                      naming_share: float | None = None) -> Tensor:
    """The term of one image: similarity (N, P) of its P points to each novel class's memory (NaN
    where a class is skipped), scores (N, P) of the novel classes at the points in [0, 1], present
    (N,) bool -> a scalar: the mean over present, compared classes of the negative term on the
    ``share`` most alike points plus the positive term on the ``naming_share`` (default ``share``;
    0: no positive term) least alike."""
    points = similarity.shape[1]
    count = max(1, math.ceil(share * points))
    naming_count = count if naming_share is None else math.ceil(naming_share * points)
    scores = scores.clamp(1e-6, 1 - 1e-6)
    naming = scores / scores[present].sum(0, keepdim=True).clamp(min=1e-6)
    compared = present & ~similarity.isnan().any(1)
    terms = []
    for cls in compared.nonzero().flatten().tolist():
        order = similarity[cls].argsort(descending=True)
        term = -torch.log1p(-scores[cls, order[:count]]).mean()
        if naming_count:
            term = term - naming[cls, order[points - naming_count:]].clamp(min=1e-6).log().mean()
        terms.append(term)
    return torch.stack(terms).mean() if terms else scores.sum() * 0


class EliminationMemory(nn.Module):
    """Per novel class, a ring of pixel features from images whose label lacks the class."""

    def __init__(self, classes: int, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("features", torch.zeros(classes, size, dim))
        self.register_buffer("filled", torch.zeros(classes, dtype=torch.int64))
        self.register_buffer("next", torch.zeros(classes, dtype=torch.int64))

    def similarity(self, points: Tensor) -> Tensor:
        """points (P, C) unit features -> (N, P): each point's largest cosine similarity to each
        class's memory; NaN rows for classes with fewer than MIN_MEMORY entries."""
        result = torch.full((self.features.shape[0], points.shape[0]), math.nan, device=points.device)
        for cls in range(self.features.shape[0]):
            filled = int(self.filled[cls])
            if filled >= MIN_MEMORY:
                result[cls] = (points @ self.features[cls, :filled].T).amax(1)
        return result

    @torch.no_grad()
    def add(self, cls: int, points: Tensor) -> None:
        """Push (P, C) unit features into class ``cls``'s ring, oldest out first."""
        size = self.features.shape[1]
        points = points[-size:]
        slots = (int(self.next[cls]) + torch.arange(len(points), device=points.device)) % size
        self.features[cls, slots] = points.to(self.features.dtype)
        self.next[cls] = (int(self.next[cls]) + len(points)) % size
        self.filled[cls] = min(size, int(self.filled[cls]) + len(points))


def unit_features(mask_features: Tensor, points: Tensor) -> Tensor:
    """Detached, unit-length features (P, C) of one image's (C, h*w) map at flat ``points``."""
    return F.normalize(mask_features.detach().float()[:, points].T, dim=1)
