"""Hungarian matching of queries to targets (method reference section 4.1, with bug 2 fixed).

Cost of query q for target j:
- target with a mask:    -w_cls * p_q[c_j] + w_focal * FocalCost(m_q, M_j) + w_dice * DiceCost(m_q, M_j)
- target without a mask: -w_cls * p_q[c_j]   (novel classes: only the class is known)

Masks are compared at prediction resolution (stride 4) with the ground truth nearest-downsampled.
Which targets have a mask comes from the ``has_mask`` flag, and the cost matrix keeps the targets
in their original order, so the returned target indices are always the caller's indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from simformer_cli.model.targets import ImageTargets


def pairwise_focal_cost(mask_logits: Tensor, target_masks: Tensor, alpha: float, gamma: float) -> Tensor:
    """Mean-over-pixels sigmoid focal loss of every prediction against every target.

    mask_logits (Q, P), target_masks (T, P) in {0, 1} -> (Q, T). Linear in the target, so the
    positive and negative parts become two matrix products instead of a (Q, T, P) tensor.
    """
    prob = mask_logits.sigmoid()
    positive = alpha * (1 - prob) ** gamma * F.softplus(-mask_logits)  # loss if the pixel is 1
    negative = (1 - alpha) * prob**gamma * F.softplus(mask_logits)  # loss if the pixel is 0
    cost = positive @ target_masks.T + negative @ (1 - target_masks).T
    return cost / mask_logits.shape[1]


def pairwise_dice_cost(mask_logits: Tensor, target_masks: Tensor) -> Tensor:
    """1 - (2 sum(sigma(m) M) + 1) / (sum sigma(m) + sum M + 1) for every pair: (Q, P), (T, P) -> (Q, T)."""
    prob = mask_logits.sigmoid()
    numerator = 2 * prob @ target_masks.T
    denominator = prob.sum(-1)[:, None] + target_masks.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher:
    """One-to-one assignment of queries to each image's targets, minimising the summed cost."""

    def __init__(
        self,
        *,
        class_weight: float = 1.0,
        focal_weight: float = 20.0,
        dice_weight: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        self.class_weight = class_weight
        self.focal_weight = focal_weight
        self.dice_weight = dice_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @torch.no_grad()
    def cost_matrix(self, class_logits: Tensor, mask_logits: Tensor, target: ImageTargets) -> Tensor:
        """class_logits (Q, K+1), mask_logits (Q, h, w) -> cost (Q, T) in the targets' order."""
        class_probs = class_logits.float().softmax(-1)
        cost = -self.class_weight * class_probs[:, target.classes]
        with_mask = target.has_mask.nonzero().squeeze(1)
        if len(with_mask):
            size = mask_logits.shape[-2:]
            gt = F.interpolate(target.masks[with_mask][None].float(), size=size, mode="nearest")[0]
            logits = mask_logits.float().flatten(1)
            gt = gt.flatten(1)
            mask_cost = self.focal_weight * pairwise_focal_cost(
                logits, gt, self.focal_alpha, self.focal_gamma
            ) + self.dice_weight * pairwise_dice_cost(logits, gt)
            cost[:, with_mask] += mask_cost
        return cost

    @torch.no_grad()
    def __call__(
        self, pred_logits: Tensor, pred_masks: Tensor, targets: Sequence[ImageTargets]
    ) -> list[tuple[Tensor, Tensor]]:
        """pred_logits (B, Q, K+1), pred_masks (B, Q, h, w) -> per image (query_idx, target_idx).

        Both index tensors are int64 of length min(Q, T) on the predictions' device, sorted by
        query; target_idx indexes the image's targets in their original order.
        """
        matches = []
        for class_logits, mask_logits, target in zip(pred_logits, pred_masks, targets):
            cost = self.cost_matrix(class_logits, mask_logits, target).cpu().numpy()
            rows, cols = linear_sum_assignment(cost) if cost.size else (np.empty(0), np.empty(0))
            matches.append((
                torch.as_tensor(rows, dtype=torch.int64, device=pred_logits.device),
                torch.as_tensor(cols, dtype=torch.int64, device=pred_logits.device),
            ))
        return matches
