"""Pure loss functions of the SimFormer objective: focal, dice, complementary, novel partition,
novel MIL, similarity, distillation.

No state, no randomness, no matching: each takes tensors and returns a loss, so each can be
checked against hand-computed values.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Focal loss per mask, averaged over pixels: (N, P) logits, (N, P) targets in [0, 1] -> (N,).

    FL = alpha_t * (1 - p_t)^gamma * BCE, with p_t the probability given to the true label and
    alpha_t = alpha on positives, 1 - alpha on negatives (Lin et al., as in DETR/MaskFormer).
    """
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    # 1 - p_t = p + t - 2pt and alpha_t = (1 - alpha) + (2 alpha - 1) t, written with few passes
    # over the (N, P) maps: at full resolution these element-wise passes are the loss's cost.
    miss = prob + targets - 2 * prob * targets
    weight = miss.square() if gamma == 2 else miss.pow(gamma)
    weight = weight * ((1 - alpha) + (2 * alpha - 1) * targets)
    return (weight * bce).mean(-1)


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """1 - (2 sum(sigma(m) M) + 1) / (sum sigma(m) + sum M + 1) per mask: (N, P), (N, P) -> (N,)."""
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


def complementary_terms(
    union_logits: Tensor, non_base: Tensor, *, focal_weight: float, dice_weight: float,
    alpha: float = 0.25, gamma: float = 2.0,
) -> Tensor:
    """The complementary loss: the union of the novel-matched masks must cover exactly the
    non-base, non-padding region. For unions already taken (the pixel-wise max of the novel masks'
    logits and of a floor, sigmoid(-2.9444) = 0.05, so that on base pixels the loss stops pushing
    once every novel mask is below it): (G, P) logits, (G, P) non-base maps -> (G,),
    focal_weight * focal + dice_weight * dice of each row."""
    focal = sigmoid_focal_loss(union_logits, non_base, alpha, gamma)
    return focal_weight * focal + dice_weight * dice_loss(union_logits, non_base)


def overlap_terms(group_probs: Tensor, region: Tensor) -> Tensor:
    """How much a group's masks claim the same pixels: (G, S, P) mask probabilities (rows of
    padding are zeros), (G, P) region -> (G,), the mean over the region's pixels of the sum of the
    group's probabilities minus their largest. Zero where at most one mask claims each pixel; the
    gradient leaves the strongest mask of each pixel alone and pushes the others down."""
    excess = group_probs.sum(1) - group_probs.amax(1)
    region = region.to(excess.dtype)
    return (excess * region).sum(-1) / region.sum(-1).clamp(min=1.0)


def presence_terms(probs: Tensor, region: Tensor, share: float) -> Tensor:
    """Each mask must claim something: (N, P) mask probabilities, (N, P) region -> (N,),
    -log of the mean of the mask's ``share`` highest probabilities inside its region (at least
    one pixel). A row with an empty region gives 0."""
    inside = region.sum(-1)
    wanted = torch.clamp(torch.ceil(inside.to(probs.dtype) * share), min=1).long()
    ranked = torch.where(region.bool(), probs, torch.zeros_like(probs)).sort(dim=-1, descending=True).values
    top = ranked.cumsum(-1).gather(-1, (wanted - 1)[:, None])[:, 0] / wanted
    return torch.where(inside > 0, -torch.log(top.clamp(min=1e-6)), torch.zeros_like(top))


def novel_mil_terms(scores: Tensor, region: Tensor, present: Tensor, absent: Tensor, share: float) -> Tensor:
    """The image-label multiple-instance term of a batch: scores (B, N, P) of the novel classes in
    [0, 1], region (B, P) bool, present and absent (B, N) bool -> a scalar, the mean over present
    (image, class) of -log(the mean of the class's ``share`` highest scores in the region) plus the
    mean over absent ones of the mean over the region of -log(1 - score). Images with an empty
    region count for nothing."""
    scores = scores.clamp(1e-6, 1 - 1e-6)
    batch, classes, _ = scores.shape
    inside = region[:, None, :].expand(-1, classes, -1).reshape(batch * classes, -1)
    flat = scores.reshape(batch * classes, -1)
    positive = presence_terms(flat, inside, share).view(batch, classes)
    counts = region.sum(-1, keepdim=True).to(scores.dtype)
    negative = (-torch.log1p(-scores) * region[:, None, :]).sum(-1) / counts.clamp(min=1.0)
    has_region = counts > 0
    present, absent = present & has_region, absent & has_region
    zero = scores.sum() * 0
    total = zero
    if bool(present.any()):
        total = total + positive[present].mean()
    if bool(absent.any()):
        total = total + negative[absent].mean()
    return total


def balanced_binary_cross_entropy(
    log_probs: Tensor, same: Tensor, valid: Tensor, positive_weight: float, negative_weight: float
) -> Tensor:
    """Class-balanced BCE of the similarity net over valid pairs.

    log_probs (N, 2): log P(different), log P(same); same (N,) bool: the two pixels share a base
    class; valid (N,) bool. Sum of valid * w_y * BCE divided by the number of valid pairs (a
    zero that still carries a graph when there is none).
    """
    nll = -torch.where(same, log_probs[:, 1], log_probs[:, 0])
    weights = torch.where(same, positive_weight, negative_weight) * valid.to(nll.dtype)
    return (weights * nll).sum() / valid.sum().clamp(min=1e-5)


def distillation_loss(teacher: Tensor, student: Tensor, kind: Literal["cce", "ce"]) -> Tensor:
    """Mean over all pairs of the loss pulling student similarity u towards teacher t, both in [0, 1].

    - ``cce``: -relu(t - 0.5) * log(1 + u) - relu(0.5 - t) * log(2 - u). Only t's side of 0.5
      matters, with strength |t - 0.5|; an unsure teacher (t near 0.5) asks for nothing.
    - ``ce``: t and u clamped to [0.01, 0.99], then -t log u - (1 - t) log(1 - u).
    """
    if kind == "cce":
        pull_up = F.relu(teacher - 0.5) * torch.log1p(student)
        push_down = F.relu(0.5 - teacher) * torch.log(2 - student)
        return -(pull_up + push_down).mean()
    teacher = teacher.clamp(0.01, 0.99)
    student = student.clamp(0.01, 0.99)
    return -(teacher * student.log() + (1 - teacher) * (1 - student).log()).mean()
