"""Pixel-pixel similarity transfer on image pairs: the similarity net and its distillation.

The batch holds consecutive pairs [a0, b0, a1, b1, ...]. For each pair:
- base loss: 100 points per image (80 on a base class both images show, 20 elsewhere outside
  padding), all 100 x 100 cross-image pairs in both orders; the similarity net learns
  "same base class?" with class-balanced BCE on detached mask features;
- distillation, only if the two images share a novel class in their image-level labels: 100
  non-base, non-padding points per image; the similarity net (teacher, no gradient) scores the
  cross-image pairs; the student is ReLU(cos) of the points' novel-class score vectors.
Only ``base_label`` and ``pad`` are read: novel pixel identities are never needed.
All sampling draws from the caller's CPU ``torch.Generator`` so runs are reproducible on any device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simformer_cli.model.losses import balanced_binary_cross_entropy, distillation_loss
from simformer_cli.settings.model import LossSettings
from simformer_cli.model.simnet import PairSimilarityNet
from simformer_cli.model.targets import ImageTargets, nearest_downsample


def downsample_regions(targets: Sequence[ImageTargets], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Nearest-downsample base labels and pad maps to the mask-feature size -> (B, h, w) each."""
    base = nearest_downsample(torch.stack([t.base_label for t in targets]), size)
    return base.contiguous(), nearest_downsample(torch.stack([t.pad for t in targets]), size).contiguous()


def sample_regions(regions: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """``count`` flat pixel indices per row from the first non-empty of its fallback regions.

    regions (R, F, P) bool: for each of R rows, F regions over P flat pixels, tried in order.
    Draws without replacement when the region holds at least ``count`` pixels, with replacement
    otherwise -> (R, count) int64; -1 throughout a row whose regions are all empty. All rows are
    drawn at once: a random key per pixel, the region's pixels in key order (a uniform random
    order), and positions past a small region's size filled by uniform draws among its pixels.
    """
    rows, _, pixels = regions.shape
    device = regions.device
    sizes = regions.sum(2)  # (R, F)
    first = (sizes > 0).int().argmax(1)  # the first non-empty region (0 when none is)
    every = torch.arange(rows, device=device)
    region, size = regions[every, first], sizes[every, first]  # (R, P), (R,)
    keys = torch.rand((rows, pixels), generator=generator).to(device).masked_fill_(~region, 2.0)
    ordered = keys.topk(min(count, pixels), dim=1, largest=False).indices  # the region's pixels come first
    slot = torch.arange(count, device=device)
    fill = torch.rand((rows, count), generator=generator).to(device) * size[:, None]
    fill = torch.minimum(fill.long(), (size[:, None] - 1).clamp(min=0))  # uniform in [0, size)
    points = ordered.gather(1, torch.where(slot < size[:, None], slot, fill))
    return points.masked_fill_(size[:, None] == 0, -1)


def balanced_accuracy(log_probs: Tensor, same: Tensor, valid: Tensor) -> float | None:
    """Mean of the similarity net's recall on same-class and on different-class valid pairs
    (0.5 = chance); None when either kind is missing. log_probs (N, 2) as in the base loss."""
    said_same = log_probs[:, 1] > log_probs[:, 0]
    kinds = torch.stack((same & valid, ~same & valid))  # (2, N): valid same pairs, valid different pairs
    right = torch.stack((said_same, ~said_same))
    totals, hits = kinds.sum(1), (kinds & right).sum(1)
    counts = torch.stack((totals, hits)).tolist()  # one read of four numbers
    if min(counts[0]) == 0:
        return None
    return (counts[1][0] / counts[0][0] + counts[1][1] / counts[0][1]) / 2


class ClassBalance(nn.Module):
    """Running counts of same/different valid pairs over the last ``window`` iterations.

    Stored as buffers so a resumed run continues with the same weights as an uninterrupted one.
    """

    def __init__(self, window: int) -> None:
        super().__init__()
        self.register_buffer("counts", torch.zeros(window, 2, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def update(self, num_same: int, num_different: int) -> tuple[float, float]:
        """Record this iteration's counts -> (weight of "same" pairs, weight of "different" pairs).

        Each class is weighted by the other's frequency, so both contribute equally on average.
        """
        slot = int(self.step) % self.counts.shape[0]
        self.counts[slot, 0], self.counts[slot, 1] = float(num_same), float(num_different)
        self.step += 1
        same, different = self.counts.sum(0).tolist()
        total = same + different
        if total == 0:
            return 0.5, 0.5
        return different / total, same / total


class PairLosses(nn.Module):
    """Similarity-net base loss ("loss_sim") and distillation ("loss_distill"), final layer only."""

    def __init__(self, *, mask_dim: int, novel_classes: Sequence[int], settings: LossSettings) -> None:
        super().__init__()
        self.settings = settings
        self.simnet = PairSimilarityNet(mask_dim, mask_dim)
        self.balance = ClassBalance(settings.balance_window)
        self.register_buffer("novel_classes", torch.tensor(sorted(novel_classes), dtype=torch.int64), persistent=False)
        #: Balanced accuracy of the similarity net on the last call's base pairs (a diagnostic the
        #: training log records as ``sim_accuracy``; None before the first call or without both kinds).
        self.accuracy: float | None = None

    def forward(
        self,
        mask_features: Tensor,
        pred_logits: Tensor,
        pred_masks: Tensor,
        targets: Sequence[ImageTargets],
        generator: torch.Generator,
    ) -> dict[str, Tensor]:
        """mask_features (B, C, h, w), pred_logits (B, Q, K+1), pred_masks (B, Q, h, w), B even."""
        if mask_features.shape[0] % 2:
            raise ValueError(f"similarity losses need image pairs, got an odd batch of {mask_features.shape[0]}")
        base, pad = downsample_regions(targets, tuple(mask_features.shape[-2:]))
        features = mask_features.detach().float().flatten(2)  # (B, C, h*w)
        base, pad = base.flatten(1), pad.flatten(1)
        losses = {"loss_sim": self._base_loss(features, base, pad, generator)}
        if self.settings.distillation:
            losses["loss_distill"] = self._distillation(
                features, pred_logits.float(), pred_masks.float().flatten(2), base, pad, targets, generator
            )
        return losses

    def _base_points(self, base: Tensor, pad: Tensor, generator: torch.Generator) -> Tensor:
        """Per image, 80 points on a base class both images of its pair show (any base pixel if
        none), 20 elsewhere -> (B, points) flat pixel indices. base, pad (B, P)."""
        batch = base.shape[0]
        present = torch.zeros((batch, max(int(base.max()), 0) + 2), dtype=torch.bool, device=base.device)
        present.scatter_(1, base + 1, True)  # column 0: not base; column c + 1: base class c
        common = present[0::2, 1:] & present[1::2, 1:]  # (pairs, classes) shown by both images
        keys = torch.rand(common.shape, generator=generator).to(base.device).masked_fill_(~common, -1.0)
        chosen = keys.argmax(1).repeat_interleave(2)[:, None]  # a shared class drawn uniformly, per image
        shared = common.any(1).repeat_interleave(2)[:, None]
        positive = torch.where(shared, base == chosen, base >= 0)
        inside, anywhere = ~pad, torch.ones_like(pad)
        regions = torch.stack((torch.stack((positive, inside, anywhere), 1),
                               torch.stack((inside & ~positive, inside, anywhere), 1)), 1)  # (B, 2, 3, P)
        positive_count = self.settings.base_positive_points
        other_count = self.settings.base_points - positive_count
        # One draw for both kinds: the first ``other_count`` of a ``positive_count`` draw are a draw
        # of their own (without replacement when the region is large enough, with it otherwise).
        points = sample_regions(regions.flatten(0, 1), max(positive_count, other_count), generator).view(batch, 2, -1)
        return torch.cat((points[:, 0, :positive_count], points[:, 1, :other_count]), dim=1)

    def _base_loss(self, features: Tensor, base: Tensor, pad: Tensor, generator: torch.Generator) -> Tensor:
        """Grid g = image g's points against its partner's (pairs [a0, b0, ...]: both orders)."""
        points = self._base_points(base, pad, generator)  # (B, n)
        partner = torch.arange(features.shape[0], device=features.device) ^ 1
        at_points = _gather_points(features, points)  # (B, n, C)
        labels = base.gather(1, points)  # (B, n)
        labels_x, labels_y = labels[:, :, None], labels[partner][:, None, :]
        same_t = ((labels_x == labels_y) & (labels_x >= 0)).flatten()
        # A pair says something only if at least one pixel's class is known.
        valid_t = ((labels_x >= 0) | (labels_y >= 0)).flatten()
        weight_same, weight_different = self.balance.update(
            int((same_t & valid_t).sum()), int((~same_t & valid_t).sum())
        )
        log_probs = self.simnet(at_points, at_points[partner]).log_softmax(dim=-1).flatten(0, 2)
        self.accuracy = balanced_accuracy(log_probs.detach(), same_t, valid_t)
        return balanced_binary_cross_entropy(log_probs, same_t, valid_t, weight_same, weight_different)

    def _distillation(
        self,
        features: Tensor,
        pred_logits: Tensor,
        pred_masks: Tensor,
        base: Tensor,
        pad: Tensor,
        targets: Sequence[ImageTargets],
        generator: torch.Generator,
    ) -> Tensor:
        """Pairs whose image-level labels share a novel class and whose images both have
        non-base pixels: grid g = image g's points against its partner's, both orders."""
        novel = torch.stack([torch.isin(self.novel_classes, t.image_classes) for t in targets])  # (B, N_novel)
        pairs = (novel[0::2] & novel[1::2]).any(1).nonzero().flatten().tolist()
        if not pairs:
            return pred_logits.new_zeros(())
        images = torch.tensor([i for pair in pairs for i in (2 * pair, 2 * pair + 1)], device=features.device)
        regions = ((base[images] < 0) & ~pad[images])[:, None]  # (D, 1, P)
        points = sample_regions(regions, self.settings.novel_points, generator)
        kept = (points[0::2, 0] >= 0) & (points[1::2, 0] >= 0)  # both images of the pair have some
        if not bool(kept.all()):
            if not bool(kept.any()):
                return pred_logits.new_zeros(())
            keep = kept.repeat_interleave(2)
            images, points = images[keep], points[keep]
        partner = torch.arange(len(images), device=features.device) ^ 1
        # Unit novel-class score vectors sum_q softmax(z_q)[novel] * sigmoid(m_q) at the points.
        class_probs = pred_logits[images].softmax(-1)[:, :, self.novel_classes]  # (D, Q, N_novel)
        scores = F.normalize(_gather_points(pred_masks[images], points).sigmoid() @ class_probs, dim=2)  # (D, n, N_novel)
        # intra_image_released: the released code's student, two points of the same image.
        other = scores[partner] if self.settings.distill_pairs == "cross_image" else scores
        students = F.relu(scores @ other.transpose(1, 2)).flatten()
        at_points = _gather_points(features[images], points)
        with torch.no_grad():
            teacher = self.simnet.same_probability(at_points, at_points[partner]).flatten()
        return distillation_loss(teacher, students, self.settings.distill_loss)


def _gather_points(maps: Tensor, points: Tensor) -> Tensor:
    """maps (B, C, P) read at points (B, n) flat indices -> (B, n, C)."""
    return maps.gather(2, points[:, None, :].expand(-1, maps.shape[1], -1)).transpose(1, 2)
