"""The SimFormer training objective (method reference section 4.7).

For the last decoder layer and, with deep supervision, every earlier one ("_aux{i}" suffix):
- "loss_ce":    CE over K+1 classes for all queries (matched -> target class, base or novel;
                unmatched -> no object, weight 0.1);
- "loss_focal", "loss_dice": sigmoid focal and dice of queries matched to targets with a mask,
                normalised by the number of such targets in the batch;
- "loss_comp":  the complementary loss of images with maskless (novel) targets.
For the last layer only, with the batch laid out as image pairs: "loss_sim" (similarity net on
base pixels) and "loss_distill" (its judgement distilled into novel-class scores).

Every returned term is already multiplied by its weight, so the logged terms add up to the loss
being optimised: ``total_loss(losses)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simformer_cli.model.losses import complementary_loss, dice_loss, sigmoid_focal_loss
from simformer_cli.model.matcher import HungarianMatcher, small_target_masks
from simformer_cli.model.pair_losses import PairLosses
from simformer_cli.model.points import point_sample, uncertain_points
from simformer_cli.model.settings import LossSettings, ModelSettings
from simformer_cli.model.targets import ImageTargets


def count_masks(targets: Sequence[ImageTargets]) -> int:
    """Targets with a pixel mask in a batch: what the focal and dice sums are divided by."""
    return sum(int(t.has_mask.sum()) for t in targets)


def total_loss(losses: Mapping[str, Tensor]) -> Tensor:
    """The optimised loss: the sum of the (already weighted) terms."""
    return torch.stack([value for value in losses.values()]).sum()


def _upsample(mask_logits: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, h, w) -> (N, H, W), bilinear: losses are computed at the input resolution."""
    return F.interpolate(mask_logits[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


class SetCriterion(nn.Module):
    """Matches queries to targets and computes the weighted loss terms of one training step.

    Holds the similarity net (when similarity is on) and its class-balance counts, so the
    criterion's parameters must be optimised and its state checkpointed with the model's.
    """

    def __init__(
        self, *, num_classes: int, mask_dim: int, novel_classes: Sequence[int], settings: LossSettings
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.settings = settings
        self.matcher = HungarianMatcher(
            class_weight=settings.match_class_weight,
            focal_weight=settings.match_focal_weight,
            dice_weight=settings.match_dice_weight,
            focal_alpha=settings.focal_alpha,
            focal_gamma=settings.focal_gamma,
        )
        class_weights = torch.ones(num_classes + 1)
        class_weights[-1] = settings.no_object_weight
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.pair_losses = (
            PairLosses(mask_dim=mask_dim, novel_classes=novel_classes, settings=settings)
            if settings.similarity
            else None
        )

    def forward(
        self,
        outputs: Mapping[str, Tensor | list[dict[str, Tensor]]],
        targets: Sequence[ImageTargets],
        generator: torch.Generator,
        num_masks: float | None = None,
    ) -> dict[str, Tensor]:
        """outputs: MaskFormer.forward's dict; targets: one ImageTargets per image (same order).

        ``generator`` (a CPU torch.Generator) drives all point sampling. With similarity on, the
        batch must be consecutive pairs [a0, b0, a1, b1, ...]. ``num_masks`` divides the focal and
        dice sums; by default the number of targets with a mask in ``targets``. The training loop
        passes the global batch's count divided by its number of micro-batches (processes x
        accumulation), so that averaging the micro-batches' gradients gives the sum over the
        whole batch divided by its count, as with one process (MaskFormer's all-reduced count).
        """
        if len(targets) != outputs["pred_logits"].shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {outputs['pred_logits'].shape[0]} images")
        for target in targets:
            target.validate()
            if len(target.classes) and int(target.classes.max()) >= self.num_classes:
                raise ValueError(f"target class {int(target.classes.max())} >= num_classes {self.num_classes}")
        # Every layer is matched against the same targets at the same size: downsample them once.
        small = small_target_masks(targets, tuple(outputs["pred_masks"].shape[-2:]))
        layers = [(outputs["pred_logits"], outputs["pred_masks"])]
        if self.settings.deep_supervision:
            layers += [(aux["pred_logits"], aux["pred_masks"]) for aux in outputs["aux_outputs"]]
        losses: dict[str, Tensor] = {}
        for index, (logits, masks) in enumerate(layers):
            suffix = "" if index == 0 else f"_aux{index - 1}"
            layer = self.layer_losses(logits, masks, targets, generator, small, num_masks)
            losses.update({f"{name}{suffix}": value for name, value in layer.items()})
        if self.pair_losses is not None:
            pair_losses = self.pair_losses(
                outputs["mask_features"], outputs["pred_logits"], outputs["pred_masks"], targets, generator
            )
            losses["loss_sim"] = self.settings.sim_weight * pair_losses["loss_sim"]
            if "loss_distill" in pair_losses:
                losses["loss_distill"] = self.settings.distill_weight * pair_losses["loss_distill"]
        return losses

    def layer_losses(
        self,
        pred_logits: Tensor,
        pred_masks: Tensor,
        targets: Sequence[ImageTargets],
        generator: torch.Generator,
        small_masks: Tensor | None = None,
        num_masks: float | None = None,
    ) -> dict[str, Tensor]:
        """Weighted CE, focal, dice (and complementary) terms of one decoder layer.

        pred_logits (B, Q, K+1), pred_masks (B, Q, h, w); computed in float32 whatever the
        autocast dtype, since focal terms underflow in bfloat16. ``generator`` draws the loss
        points when ``mask_points`` is set; ``small_masks`` are the matcher's downsampled targets;
        ``num_masks`` as in :meth:`forward`.
        """
        pred_logits, pred_masks = pred_logits.float(), pred_masks.float()
        matches = self.matcher(pred_logits, pred_masks, targets, small_masks)
        settings = self.settings
        losses = {"loss_ce": settings.class_weight * self._classification(pred_logits, matches, targets)}
        focal, dice = self._mask_losses(pred_masks, matches, targets, generator,
                                        max(count_masks(targets) if num_masks is None else num_masks, 1.0))
        losses["loss_focal"] = settings.mask_focal_weight * focal
        losses["loss_dice"] = settings.dice_weight * dice
        if settings.complementary:
            losses["loss_comp"] = settings.complementary_weight * self._complementary(
                pred_masks, matches, targets, generator)
        return losses

    def _classification(
        self, pred_logits: Tensor, matches: list[tuple[Tensor, Tensor]], targets: Sequence[ImageTargets]
    ) -> Tensor:
        target_classes = torch.full(pred_logits.shape[:2], self.num_classes, device=pred_logits.device)
        for image, (queries, indices) in enumerate(matches):
            target_classes[image, queries] = targets[image].classes[indices]
        return F.cross_entropy(pred_logits.transpose(1, 2), target_classes, weight=self.class_weights)

    def _mask_losses(
        self,
        pred_masks: Tensor,
        matches: list[tuple[Tensor, Tensor]],
        targets: Sequence[ImageTargets],
        generator: torch.Generator,
        num_masks: float,
    ) -> tuple[Tensor, Tensor]:
        predicted, wanted = [], []
        for image, (queries, indices) in enumerate(matches):
            with_mask = targets[image].has_mask[indices]
            if bool(with_mask.any()):
                predicted.append(pred_masks[image, queries[with_mask]])
                wanted.append(targets[image].masks[indices[with_mask]])
        if not predicted:
            # Zero that keeps the mask head in the graph (distributed training needs every
            # parameter to get a gradient each step).
            zero = pred_masks.sum() * 0
            return zero, zero
        predicted_t, wanted_t = self._compare(torch.cat(predicted), torch.cat(wanted).float(), generator)
        alpha, gamma = self.settings.focal_alpha, self.settings.focal_gamma
        focal = sigmoid_focal_loss(predicted_t, wanted_t, alpha, gamma).sum() / num_masks
        return focal, dice_loss(predicted_t, wanted_t).sum() / num_masks

    def _compare(self, logits: Tensor, wanted: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Mask logits (N, h, w) and targets (N, H, W) -> the values the losses compare, (N, P) each:
        every pixel at the targets' resolution, or ``mask_points`` sampled points per mask."""
        settings = self.settings
        if settings.mask_points is None:
            return _upsample(logits, tuple(wanted.shape[-2:])).flatten(1), wanted.flatten(1)
        coords = uncertain_points(logits, settings.mask_points, oversample_ratio=settings.point_oversample_ratio,
                                  importance_ratio=settings.point_importance_ratio, generator=generator)
        return point_sample(logits, coords), point_sample(wanted, coords)

    def _complementary(
        self,
        pred_masks: Tensor,
        matches: list[tuple[Tensor, Tensor]],
        targets: Sequence[ImageTargets],
        generator: torch.Generator,
    ) -> Tensor:
        settings = self.settings
        per_image = []
        for image, (queries, indices) in enumerate(matches):
            target = targets[image]
            if bool(target.has_mask.all()):
                continue  # nothing unknown to cover in this image
            novel = pred_masks[image, queries[~target.has_mask[indices]]]  # (n, h, w), n may be 0
            non_base = ((target.base_label < 0) & ~target.pad).float()
            if settings.mask_points is None:
                novel_values, wanted = _upsample(novel, tuple(non_base.shape)), non_base
            else:
                # Points where the union (with its floor) is least certain; each novel mask is
                # read there, and the union taken of the point values as of the upsampled maps.
                floor = novel.new_full((1, *novel.shape[1:]), settings.complementary_floor_logit)
                union = torch.cat((novel, floor)).amax(dim=0, keepdim=True)
                coords = uncertain_points(union, settings.mask_points,
                                          oversample_ratio=settings.point_oversample_ratio,
                                          importance_ratio=settings.point_importance_ratio, generator=generator)
                wanted = point_sample(non_base[None], coords)[0]
                novel_values = (point_sample(novel, coords.expand(len(novel), -1, -1)) if len(novel)
                                else novel.new_zeros((0, settings.mask_points)))
            per_image.append(complementary_loss(
                novel_values,
                wanted,
                floor_logit=settings.complementary_floor_logit,
                focal_weight=settings.mask_focal_weight,
                dice_weight=settings.dice_weight,
                alpha=settings.focal_alpha,
                gamma=settings.focal_gamma,
            ))
        if not per_image:
            return pred_masks.sum() * 0
        return torch.stack(per_image).sum() / (len(per_image) + 1e-5)


def build_criterion(
    model_settings: ModelSettings, loss_settings: LossSettings, *, novel_classes: Sequence[int]
) -> SetCriterion:
    """The criterion matching a model built by build_model(model_settings)."""
    return SetCriterion(
        num_classes=model_settings.num_classes,
        mask_dim=model_settings.mask_dim,
        novel_classes=novel_classes,
        settings=loss_settings,
    )
