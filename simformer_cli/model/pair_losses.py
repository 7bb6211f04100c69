"""Pixel-pixel similarity transfer on image pairs (method reference sections 4.5 and 4.6).

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
from simformer_cli.model.settings import LossSettings
from simformer_cli.model.simnet import PairSimilarityNet
from simformer_cli.model.targets import ImageTargets, nearest_downsample


def downsample_regions(targets: Sequence[ImageTargets], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Nearest-downsample base labels and pad maps to the mask-feature size -> (B, h, w) each."""
    base = nearest_downsample(torch.stack([t.base_label for t in targets]), size)
    return base.contiguous(), nearest_downsample(torch.stack([t.pad for t in targets]), size).contiguous()


def sample_points(regions: Sequence[Tensor], count: int, generator: torch.Generator) -> Tensor | None:
    """``count`` flat pixel indices drawn from the first non-empty region of ``regions``.

    Each region is a flat bool map (P,). Draws without replacement when the region is large
    enough, with replacement otherwise. None when every region is empty.
    """
    for region in regions:
        pixels = region.nonzero().squeeze(1)
        if len(pixels) >= count:
            return pixels[torch.randperm(len(pixels), generator=generator)[:count].to(pixels.device)]
        if len(pixels):
            return pixels[torch.randint(len(pixels), (count,), generator=generator).to(pixels.device)]
    return None


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

    def _base_points(self, base: Tensor, pad: Tensor, a: int, b: int, generator: torch.Generator) -> list[Tensor]:
        """80 points on a base class both images show (any base pixel if none), 20 elsewhere."""
        present = [torch.bincount(base[i][base[i] >= 0], minlength=1) > 0 for i in (a, b)]
        shared = min(len(present[0]), len(present[1]))
        common = (present[0][:shared] & present[1][:shared]).nonzero().flatten().tolist()  # ascending ids
        chosen = common[int(torch.randint(len(common), (), generator=generator))] if common else None
        positive_count = self.settings.base_positive_points
        other_count = self.settings.base_points - positive_count
        points = []
        for image in (a, b):
            positive = base[image] >= 0 if chosen is None else base[image] == chosen
            inside, anywhere = ~pad[image], torch.ones_like(pad[image])
            points.append(torch.cat((
                sample_points([positive, inside, anywhere], positive_count, generator),
                sample_points([inside & ~positive, inside, anywhere], other_count, generator),
            )))
        return points

    def _base_loss(self, features: Tensor, base: Tensor, pad: Tensor, generator: torch.Generator) -> Tensor:
        firsts, seconds, same, valid = [], [], [], []
        for a in range(0, features.shape[0], 2):
            points = self._base_points(base, pad, a, a + 1, generator)
            for x, y in ((0, 1), (1, 0)):  # both orders: the net is order-sensitive
                firsts.append(features[a + x][:, points[x]].T)
                seconds.append(features[a + y][:, points[y]].T)
                labels_x = base[a + x, points[x]][:, None]  # (n, 1)
                labels_y = base[a + y, points[y]][None, :]  # (1, n)
                same.append((labels_x == labels_y) & (labels_x >= 0))
                # A pair says something only if at least one pixel's class is known.
                valid.append((labels_x >= 0) | (labels_y >= 0))
        same_t, valid_t = torch.stack(same).flatten(), torch.stack(valid).flatten()
        weight_same, weight_different = self.balance.update(
            int((same_t & valid_t).sum()), int((~same_t & valid_t).sum())
        )
        log_probs = self.simnet(torch.stack(firsts), torch.stack(seconds)).log_softmax(dim=-1).flatten(0, 2)
        self.accuracy = balanced_accuracy(log_probs.detach(), same_t, valid_t)
        return balanced_binary_cross_entropy(log_probs, same_t, valid_t, weight_same, weight_different)

    def _novel_scores(self, pred_logits: Tensor, pred_masks: Tensor, image: int, points: Tensor) -> Tensor:
        """Unit novel-class score vectors sum_q softmax(z_q)[novel] * sigmoid(m_q) -> (n, N_novel)."""
        class_probs = pred_logits[image].softmax(-1)[:, self.novel_classes]  # (Q, N_novel)
        scores = pred_masks[image][:, points].sigmoid().T @ class_probs  # (n, N_novel)
        return F.normalize(scores, dim=1)

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
        firsts, seconds, students = [], [], []
        n = self.settings.novel_points
        for a in range(0, features.shape[0], 2):
            b = a + 1
            shared = targets[a].image_classes[torch.isin(targets[a].image_classes, targets[b].image_classes)]
            if not bool(torch.isin(shared, self.novel_classes).any()):
                continue
            points = [sample_points([(base[i] < 0) & ~pad[i]], n, generator) for i in (a, b)]
            if points[0] is None or points[1] is None:
                continue
            scores = [self._novel_scores(pred_logits, pred_masks, i, p) for i, p in zip((a, b), points)]
            for x, y in ((0, 1), (1, 0)):
                firsts.append(features[a + x][:, points[x]].T)
                seconds.append(features[a + y][:, points[y]].T)
                # Released code: the student compares two points of the same image (bug 1).
                partner = y if self.settings.distill_pairs == "cross_image" else x
                students.append(F.relu(scores[x] @ scores[partner].T).flatten())
        if not students:
            return pred_logits.new_zeros(())
        with torch.no_grad():
            teacher = self.simnet.same_probability(torch.stack(firsts), torch.stack(seconds)).flatten()
        return distillation_loss(teacher, torch.cat(students), self.settings.distill_loss)
