"""One-image reference forms of batched production code, for tests to compare against: the
matcher's cost matrices and matches image by image, the complementary loss of one image."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from simformer_cli.model.losses import complementary_terms
from simformer_cli.model.matcher import HungarianMatcher
from simformer_cli.model.targets import ImageTargets


def layer_cost_matrices(matcher: HungarianMatcher, pred_logits: Tensor, pred_masks: Tensor,
                        targets: Sequence[ImageTargets], small_masks: Tensor | None = None) -> list[list[Tensor]]:
    """Per decoder layer, every image's cost (Q, T_b), for pred_logits (L, B, Q, K+1) and
    pred_masks (L, B, Q, h, w): the production cost table cut per image."""
    table, sizes = matcher.cost_table(pred_logits, pred_masks, targets, small_masks)
    return [list(cost.split(sizes, dim=1)) for cost in table]


def cost_matrices(matcher: HungarianMatcher, pred_logits: Tensor, pred_masks: Tensor,
                  targets: Sequence[ImageTargets]) -> list[Tensor]:
    """Every image's cost (Q, T_b) for pred_logits (B, Q, K+1) and pred_masks (B, Q, h, w)."""
    return layer_cost_matrices(matcher, pred_logits[None], pred_masks[None], targets)[0]


def cost_matrix(matcher: HungarianMatcher, class_logits: Tensor, mask_logits: Tensor, target: ImageTargets) -> Tensor:
    """class_logits (Q, K+1), mask_logits (Q, h, w) -> cost (Q, T) in the targets' order."""
    return cost_matrices(matcher, class_logits[None], mask_logits[None], [target])[0]


def match(matcher: HungarianMatcher, pred_logits: Tensor, pred_masks: Tensor,
          targets: Sequence[ImageTargets]) -> list[tuple[Tensor, Tensor]]:
    """pred_logits (B, Q, K+1), pred_masks (B, Q, h, w) -> per image (query_idx, target_idx)."""
    return matcher.match_layers(pred_logits[None], pred_masks[None], targets)[0]


def complementary_loss(
    novel_mask_logits: Tensor,
    non_base: Tensor,
    *,
    floor_logit: float,
    focal_weight: float,
    dice_weight: float,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tensor:
    """The union of the novel-matched masks must cover exactly the non-base, non-padding region.

    novel_mask_logits (N, H, W): logits of the queries matched to maskless targets of one image
    (N may be 0); non_base (H, W), 1 where not base and not padding (bool or float; a float map
    may be soft, e.g. read between pixels). Any spatial shape works, (N, P) and (P,) included.
    The union is the pixel-wise max of the logits and of a constant floor (sigmoid(-2.9444) = 0.05): on base pixels the loss stops
    pushing once every novel mask is below the floor, so novel masks are not driven to -inf there.
    Returns focal_weight * focal + dice_weight * dice, a scalar.
    """
    floor = torch.full(non_base.shape, floor_logit, dtype=novel_mask_logits.dtype, device=non_base.device)
    union = torch.cat((novel_mask_logits, floor[None])).amax(dim=0)
    return complementary_terms(union.flatten()[None], non_base.flatten()[None].to(union.dtype),
                               focal_weight=focal_weight, dice_weight=dice_weight, alpha=alpha, gamma=gamma)[0]
