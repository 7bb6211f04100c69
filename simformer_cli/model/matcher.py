"""Hungarian matching of queries to targets, every decoder layer of a batch at once.

Cost of query q for target j:
- target with a mask:    -w_cls * p_q[c_j] + w_focal * FocalCost(m_q, M_j) + w_dice * DiceCost(m_q, M_j)
- target without a mask: -w_cls * p_q[c_j]   (novel classes: only the class is known)

Masks are compared at prediction resolution (stride 4) with the ground truth nearest-downsampled.
Which targets have a mask comes from the ``has_mask`` flag (the released code keyed it on an empty
mask, so a base region lost to downsampling lost its mask cost), and the cost matrix keeps the
targets in their original order, so the returned target indices are always the caller's indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from simformer_cli.model.targets import ImageTargets, nearest_downsample


def pairwise_focal_cost(mask_logits: Tensor, target_masks: Tensor, alpha: float, gamma: float,
                        prob: Tensor | None = None) -> Tensor:
    """Mean-over-pixels sigmoid focal loss of every prediction against every target.

    mask_logits (Q, P), target_masks (T, P) in {0, 1} -> (Q, T). Linear in the target, so the
    positive and negative parts become two matrix products instead of a (Q, T, P) tensor.
    ``prob``: ``mask_logits.sigmoid()`` when the caller has it already.
    """
    prob = mask_logits.sigmoid() if prob is None else prob
    log_one_minus = F.softplus(mask_logits)  # -log(1 - p); -log p = softplus(-x) = softplus(x) - x
    negative = (1 - alpha) * prob**gamma * log_one_minus  # loss if the pixel is 0
    positive = alpha * (1 - prob) ** gamma * (log_one_minus - mask_logits)  # loss if the pixel is 1
    # sum_p pos t + neg (1 - t) = (pos - neg) . t + sum_p neg: one matrix product instead of two.
    cost = (positive - negative) @ target_masks.T + negative.sum(-1, keepdim=True)
    return cost / mask_logits.shape[1]


def pairwise_dice_cost(mask_logits: Tensor, target_masks: Tensor, prob: Tensor | None = None) -> Tensor:
    """1 - (2 sum(sigma(m) M) + 1) / (sum sigma(m) + sum M + 1) for every pair: (Q, P), (T, P) -> (Q, T)."""
    prob = mask_logits.sigmoid() if prob is None else prob
    numerator = 2 * prob @ target_masks.T
    denominator = prob.sum(-1)[:, None] + target_masks.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


COST_CHUNK = 1 << 24  # per-pixel values of the mask costs held at once (64 MiB of float32 per temporary)


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
    def cost_table(
        self, pred_logits: Tensor, pred_masks: Tensor, targets: Sequence[ImageTargets],
        small_masks: Tensor | None = None,
    ) -> tuple[Tensor, list[int]]:
        """Every layer's costs against the whole batch's targets, one image's targets after
        another: (L, Q, sum of T_b), and the T_b. Image b's cost matrix in layer l is the block of
        columns b of ``table[l]``; the blocks of other images are never used."""
        layers, batch, queries = pred_logits.shape[:3]
        sizes = [len(target.classes) for target in targets]
        device = pred_logits.device
        if not sum(sizes):
            return pred_logits.new_zeros((layers, queries, 0)), sizes
        class_probs = pred_logits.float().softmax(-1)
        classes = torch.cat([target.classes for target in targets])
        has_mask = torch.cat([target.has_mask for target in targets])
        image_of = torch.repeat_interleave(torch.arange(batch, device=device), torch.tensor(sizes, device=device))
        # -w_cls * p_q[c_j] of each query of the target's own image: (T, L, Q) -> (L, Q, T).
        table = (-self.class_weight * class_probs[:, image_of, :, classes]).permute(1, 2, 0).contiguous()
        if small_masks is None:
            small_masks = small_target_masks(targets, tuple(pred_masks.shape[-2:]))
        if len(small_masks):
            logits = pred_masks.float().flatten(0, 2).flatten(1)  # (L*B*Q, P)
            # Rows in chunks of whole layers, so the per-pixel temporaries stay near COST_CHUNK
            # values (the paper's six layers of 8 x 100 queries at 128 x 128 would need ~1.5 GB).
            rows = max(1, COST_CHUNK // max(1, batch * queries * logits.shape[1])) * batch * queries
            chunks = []
            for part in logits.split(rows):
                prob = part.sigmoid()
                focal = pairwise_focal_cost(part, small_masks, self.focal_alpha, self.focal_gamma, prob=prob)
                chunks.append(self.focal_weight * focal + self.dice_weight * pairwise_dice_cost(part, small_masks, prob=prob))
            mask_cost = torch.cat(chunks).view(layers, batch, queries, -1)  # against every masked target
            masked = has_mask.nonzero().squeeze(1)  # small_masks' targets, in the same order
            own = mask_cost[:, image_of[masked], :, torch.arange(len(masked), device=device)]  # (Tm, L, Q)
            table[:, :, masked] += own.permute(1, 2, 0)
        return table, sizes

    @torch.no_grad()
    def match_layers(
        self, pred_logits: Tensor, pred_masks: Tensor, targets: Sequence[ImageTargets],
        small_masks: Tensor | None = None,
    ) -> list[list[tuple[Tensor, Tensor]]]:
        """pred_logits (L, B, Q, K+1), pred_masks (L, B, Q, h, w) of every decoder layer -> per
        layer, per image (query_idx, target_idx): int64 index tensors of length min(Q, T) on the
        predictions' device, sorted by query; target_idx indexes the image's targets in their
        original order. Each layer is matched on its own; they only share the cost computation
        (:meth:`cost_table`) and one device-to-host copy."""
        table, sizes = self.cost_table(pred_logits, pred_masks, targets, small_masks)
        flat = table.cpu().numpy()  # one device->host copy
        matches = []
        for layer_costs in flat:
            layer_matches, offset = [], 0
            for size in sizes:
                cost = layer_costs[:, offset: offset + size]
                offset += size
                rows, cols = linear_sum_assignment(cost) if cost.size else (np.empty(0), np.empty(0))
                layer_matches.append((
                    torch.as_tensor(rows, dtype=torch.int64, device=pred_logits.device),
                    torch.as_tensor(cols, dtype=torch.int64, device=pred_logits.device),
                ))
            matches.append(layer_matches)
        return matches


def small_target_masks(targets: Sequence[ImageTargets], size: tuple[int, int]) -> Tensor:
    """The masks of every target with a mask, image after image, nearest-downsampled to the
    prediction size and flattened: (sum of T_b with a mask, h * w) float."""
    masks = [target.masks[target.has_mask] for target in targets]
    masks = [m for m in masks if len(m)]
    if not masks:
        return torch.empty((0, size[0] * size[1]), device=targets[0].masks.device if targets else None)
    return nearest_downsample(torch.cat(masks), size).flatten(1).float()
