"""The CAM baseline's objective, three terms:

- ``loss_cls``: multi-label BCE of the pooled CAMs against the crop's image-level label set (base
  classes visible in the crop, novel classes of the whole image);
- ``loss_base``: the CAMs read as per-cell logits on base-labelled cells, where every class is
  known: the cell's own class is present, every other one, novel classes included, absent. Without
  it a classifier trained from scratch stays near chance for a thousand steps (see ``settings``);
  with it the novel maps learn where novel classes are not;
- ``loss_aff``: the affinity embedding's class-balanced BCE on pairs of base-labelled cells.

Both pixel-level terms read ``ImageTargets.base_label`` only: base class on base pixels,
``NOT_BASE`` on novel, unlabelled and padding pixels alike. Novel pixels are therefore never told
apart from unlabelled ones, and the affinity learns "same region or not" from base classes alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simformer_cli.cam.affinity import half_disk_offsets, pair_distance, shifted
from simformer_cli.cam.network import AFFINITY_STRIDE, CAM_STRIDE, CamNet
from simformer_cli.model.maskformer import normalize_images
from simformer_cli.model.targets import NOT_BASE, ImageTargets
from simformer_cli.settings.cam import CamSettings

#: -log(1 - a) is capped here, so a negative pair at distance 0 has a finite loss and gradient.
MIN_SEPARATION = 1e-5


def image_logits(cams: Tensor, pad: Tensor, sharpness: float) -> Tensor:
    """(B, K, h, w) CAMs and (B, H, W) pad map -> (B, K) logits, the log-sum-exp pooling
    (1/r) log mean exp(r * cam) with r = ``sharpness``: near the mean while the maps are flat, near
    the maximum once a region stands out. Padding cells are weighted by their share of real pixels,
    so padding never votes."""
    real = 1.0 - F.avg_pool2d(pad.float()[:, None], CAM_STRIDE)
    log_weight = real.log().flatten(1)[:, None]  # (B, 1, h*w); -inf on all-padding cells
    pooled = torch.logsumexp(sharpness * cams.flatten(2) + log_weight, dim=-1) - log_weight.exp().sum(-1).log()
    return pooled / sharpness


def image_label_targets(targets: list[ImageTargets], num_classes: int) -> Tensor:
    """(B, K) float: 1 for each class in the crop's image-level label set (base classes visible in
    the crop, novel classes of the whole image)."""
    multi_hot = torch.zeros(len(targets), num_classes, device=targets[0].pad.device)
    for row, target in enumerate(targets):
        multi_hot[row, target.image_classes] = 1.0
    return multi_hot


def cell_labels(base_label: Tensor) -> Tensor:
    """(B, H, W) base labels -> (B, H/4, W/4): a cell's base class where all its pixels share it,
    ``NOT_BASE`` where any is novel, unlabelled, padding or of another class."""
    label = base_label.float()[:, None]
    high = F.max_pool2d(label, AFFINITY_STRIDE)
    low = -F.max_pool2d(-label, AFFINITY_STRIDE)
    pure = (high == low) & (low >= 0)
    return torch.where(pure, high, torch.full_like(high, NOT_BASE))[:, 0].long()


def affinity_loss(embedding: Tensor, cells: Tensor, radius: int) -> Tensor:
    """Class-balanced BCE on every pair of base cells closer than ``radius``: the mean of
    -log a over same-class pairs and the mean of -log(1 - a) over different-class pairs, averaged
    (over the one kind present, if only one is).

    embedding (B, D, h, w); cells (B, h, w) from :func:`cell_labels`. Pairs with a ``NOT_BASE`` cell
    are never formed (masked out, so such cells get no gradient). No pair at all gives 0, still
    attached to the graph. Masks rather than indexing keep the GPU free of host syncs.
    """
    sums = [embedding.new_zeros(()), embedding.new_zeros(())]  # same class, different classes
    counts = [embedding.new_zeros(()), embedding.new_zeros(())]
    for offset in half_disk_offsets(radius):
        partner = shifted(cells, offset, fill=NOT_BASE)  # NOT_BASE outside the map too
        both = (cells >= 0) & (partner >= 0)
        distance = pair_distance(embedding, offset)
        separation = (-torch.expm1(-distance)).clamp_min(MIN_SEPARATION)  # 1 - a, a = exp(-distance)
        for kind, (chosen, loss) in enumerate(((both & (cells == partner), distance),
                                               (both & (cells != partner), -separation.log()))):
            sums[kind] = sums[kind] + (loss * chosen).sum()
            counts[kind] = counts[kind] + chosen.sum()
    means = torch.stack(sums) / torch.stack(counts).clamp_min(1)
    present = (torch.stack(counts) > 0).to(means.dtype)
    return (means * present).sum() / present.sum().clamp_min(1)


def base_pixel_loss(cams: Tensor, cells: Tensor) -> Tensor:
    """Per-cell BCE of the CAMs (B, K, h, w), upsampled to the stride-4 cells (B, h4, w4), on base
    cells only: 1 for the cell's base class, 0 for every other class, novel ones included (a base
    pixel is known not to be novel). A batch without base cells gives 0 (attached to the graph)."""
    known = (cells >= 0).to(cams.dtype)
    logits = F.interpolate(cams, size=cells.shape[-2:], mode="bilinear", align_corners=False)
    target = F.one_hot(cells.clamp_min(0), cams.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    per_cell = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=1)
    return (per_cell * known).sum() / known.sum().clamp_min(1)


class CamObjective(nn.Module):
    """The CAM network and its two losses as one module, the shape ``train_loop`` optimises:
    ``forward(images, targets, generator)`` -> weighted loss terms; ``model`` holds the weights the
    artifact keeps. Nothing is sampled (every base pair within the radius counts), so the generator
    is unused."""

    def __init__(self, model: CamNet, settings: CamSettings, num_classes: int) -> None:
        super().__init__()
        self.model = model
        self.settings = settings
        self.num_classes = num_classes

    def forward(self, images: Tensor, targets: list[ImageTargets], generator: torch.Generator) -> dict[str, Tensor]:
        outputs = self.model(normalize_images(images))
        pad = torch.stack([t.pad for t in targets])
        logits = image_logits(outputs["cams"].float(), pad, self.settings.pool_sharpness)
        loss_cls = F.binary_cross_entropy_with_logits(logits, image_label_targets(targets, self.num_classes))
        cells = cell_labels(torch.stack([t.base_label for t in targets]))
        losses = {"loss_cls": loss_cls,
                  "loss_aff": self.settings.affinity_weight * affinity_loss(outputs["embedding"].float(), cells,
                                                                            self.settings.affinity_radius)}
        if self.settings.base_pixel_weight > 0:
            losses["loss_base"] = self.settings.base_pixel_weight * base_pixel_loss(outputs["cams"].float(), cells)
        return losses
