"""A dynamic feature regularized loss (the DFR route): pixels that look alike should be predicted alike.

On the class-probability map P of the last decoder layer (the semantic scores
S_c = sum_q softmax(z_q)[c] * sigmoid(m_q), divided by their sum over the K classes so that each
pixel holds a distribution), at the mask features' stride, the CRF-style loss

    L = sum_k P_k^T W (1 - P_k) / #pairs = sum_{i != j} W_ij (1 - <P_i, P_j>) / #pairs

is small when pixels with a large affinity W_ij share a confident class. The affinity is the
product of a bilateral kernel over colour and position and a deep kernel, so a pair counts only if
it is alike in all of them:

    W_ij = exp(-|I_i - I_j|^2 / 2 s_rgb^2 - |p_i - p_j|^2 / 2 s_xy^2) * D_ij

with D_ij = exp(-|f_i - f_j|^2 / 2 s_f^2) over the current, detached, unit-length mask features
(the kernel changes as the network learns), the similarity net's symmetrised same-class
probability, or 1 (colour and position alone). The kernel is computed without gradient: the loss
shapes the predictions, never the features it measures them with.

Cost: the loss is taken over all pairs of ``points`` pixels drawn per image from the covered region
(unlabelled pixels, or all non-padding ones), not over the whole grid, so it costs O(points^2) per
image whatever the crop size; when the region holds at least ``points`` pixels (drawn without
replacement), the mean over the drawn pairs is an unbiased estimate of the mean over all its pairs. Pairs of a pixel with itself (also a pixel drawn twice from a small
region) are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from simformer_cli.model.pair_losses import sample_regions
from simformer_cli.model.simnet import PairSimilarityNet
from simformer_cli.model.targets import ImageTargets, nearest_downsample
from simformer_cli.settings.model import LossSettings

#: Keeps the class distribution defined where every query's mask is off (S sums to almost 0).
_MASS_FLOOR = 1e-6


def gaussian_kernel(embedding: Tensor) -> Tensor:
    """exp(-|z_i - z_j|^2 / 2) over embeddings already divided by their bandwidths: (B, n, D) -> (B, n, n).

    A product of Gaussian kernels is one Gaussian kernel over the concatenated, scaled vectors, so
    colour, position and features cost one batched matrix product and one exp.
    """
    squares = embedding.square().sum(-1)
    distance = (squares[:, :, None] + squares[:, None, :] - 2 * embedding @ embedding.transpose(1, 2)).clamp(min=0)
    return torch.exp(-0.5 * distance)


def affinity_vectors(colours: Tensor, positions: Tensor, features: Tensor | None, *, sigma_rgb: float,
                     sigma_xy: float, sigma_feature: float) -> Tensor:
    """Colours (B, n, 3), positions (B, n, 2) and optional features (B, n, C), each divided by its
    bandwidth (features first scaled to unit length), concatenated -> (B, n, D) for gaussian_kernel."""
    parts = [colours / sigma_rgb, positions / sigma_xy]
    if features is not None:
        parts.append(F.normalize(features, dim=-1) / sigma_feature)
    return torch.cat(parts, -1)


def similarity_kernel(simnet: PairSimilarityNet, features: Tensor) -> Tensor:
    """The similarity net's same-class probability, averaged over both orders: (B, n, C) -> (B, n, n)."""
    same = simnet.same_probability(features, features)
    return (same + same.transpose(1, 2)) / 2


def pair_disagreement(probs: Tensor, kernel: Tensor, valid: Tensor) -> Tensor:
    """sum_k P_k^T W (1 - P_k) over valid pairs, divided by their number, per image.

    probs (B, n, K) with rows summing to 1, kernel (B, n, n), valid (B, n, n) bool -> (B,); an
    image without a valid pair gives 0.
    """
    disagreement = probs.sum(-1)[:, :, None] - probs @ probs.transpose(1, 2)  # sum_k P_ik (1 - P_jk)
    weighted = (kernel * disagreement).masked_fill(~valid, 0.0)
    return weighted.sum((1, 2)) / valid.sum((1, 2)).clamp(min=1)


def class_distribution(pred_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """Semantic scores at some pixels, normalised over classes: pred_logits (B, Q, K+1) and
    mask_logits (B, Q, n) -> (B, n, K), each row a distribution."""
    scores = mask_logits.float().sigmoid().transpose(1, 2) @ pred_logits.float().softmax(-1)[..., :-1]
    return scores / scores.sum(-1, keepdim=True).clamp(min=_MASS_FLOOR)


def covered_region(targets: Sequence[ImageTargets], size: tuple[int, int], pixels: str) -> Tensor:
    """Which grid pixels the loss covers -> (B, h*w) bool: outside padding, and for ``unlabelled``
    outside every target mask (in weak-shot training the novel and ignore pixels)."""
    region = ~nearest_downsample(torch.stack([t.pad for t in targets]), size)
    if pixels == "unlabelled":
        labelled = torch.stack([t.masks.any(0) for t in targets])
        region = region & ~nearest_downsample(labelled, size)
    return region.flatten(1)


def dfr_loss(
    *,
    images: Tensor,
    pred_logits: Tensor,
    pred_masks: Tensor,
    mask_features: Tensor,
    targets: Sequence[ImageTargets],
    settings: LossSettings,
    generator: torch.Generator,
    simnet: PairSimilarityNet | None = None,
) -> Tensor:
    """The regularized loss of one batch, the mean over its images with a covered pixel (unweighted).

    images (B, 3, H, W) RGB 0..255 as the network saw them before normalising; pred_logits
    (B, Q, K+1), pred_masks (B, Q, h, w) and mask_features (B, C, h, w) of the last layer.
    ``simnet`` is required for ``dfr_deep_kernel == "similarity"``. Points are drawn from
    ``generator``.
    """
    height, width = pred_masks.shape[-2:]
    region = covered_region(targets, (height, width), settings.dfr_pixels)
    points = sample_regions(region[:, None], settings.dfr_points, generator)  # (B, n), -1 when none
    drawn = points[:, :1] >= 0  # (B, 1): the image has a covered pixel
    points = points.clamp(min=0)
    mask_logits = pred_masks.flatten(2).gather(2, points[:, None, :].expand(-1, pred_masks.shape[1], -1))
    probs = class_distribution(pred_logits, mask_logits)
    with torch.no_grad():
        kernel = _affinity(images, mask_features, points, (height, width), settings, simnet)
        valid = (points[:, :, None] != points[:, None, :]) & drawn[:, :, None]
    per_image = pair_disagreement(probs, kernel, valid)
    counted = drawn[:, 0].to(per_image.dtype)
    return (per_image * counted).sum() / counted.sum().clamp(min=1)


def _affinity(
    images: Tensor, mask_features: Tensor, points: Tensor, size: tuple[int, int], settings: LossSettings,
    simnet: PairSimilarityNet | None,
) -> Tensor:
    """W at the drawn points (B, n, n): the bilateral kernel times the chosen deep kernel."""
    height, width = size
    stride_y, stride_x = images.shape[-2] / height, images.shape[-1] / width
    # A grid pixel's colour is the mean of the input pixels it covers; its place, their centre.
    colour_grid = F.adaptive_avg_pool2d(images.float(), size).flatten(2)  # (B, 3, h*w)
    colours = colour_grid.gather(2, points[:, None, :].expand(-1, 3, -1)).transpose(1, 2)
    rows, columns = torch.div(points, width, rounding_mode="floor"), points % width
    positions = torch.stack(((rows + 0.5) * stride_y, (columns + 0.5) * stride_x), -1).float()
    deep = settings.dfr_deep_kernel
    features = None
    if deep != "none":
        flat = mask_features.detach().float().flatten(2)
        features = flat.gather(2, points[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)  # (B, n, C)
    vectors = affinity_vectors(colours, positions, features if deep == "features" else None,
                               sigma_rgb=settings.dfr_sigma_rgb, sigma_xy=settings.dfr_sigma_xy,
                               sigma_feature=settings.dfr_sigma_feature)
    kernel = gaussian_kernel(vectors)
    if deep != "similarity":
        return kernel
    if simnet is None:
        raise ValueError("dfr_deep_kernel similarity needs the similarity net (similarity=True)")
    return kernel * similarity_kernel(simnet, features)
