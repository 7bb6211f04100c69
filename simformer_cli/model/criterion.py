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
from simformer_cli.model.matcher import HungarianMatcher
from simformer_cli.model.pair_losses import PairLosses
from simformer_cli.model.settings import LossSettings, ModelSettings
from simformer_cli.model.targets import ImageTargets


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
    ) -> dict[str, Tensor]:
        """outputs: MaskFormer.forward's dict; targets: one ImageTargets per image (same order).

        ``generator`` (a CPU torch.Generator) drives all point sampling. With similarity on, the
        batch must be consecutive pairs [a0, b0, a1, b1, ...].
        """
        if len(targets) != outputs["pred_logits"].shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {outputs['pred_logits'].shape[0]} images")
        for target in targets:
            target.validate()
            if len(target.classes) and int(target.classes.max()) >= self.num_classes:
                raise ValueError(f"target class {int(target.classes.max())} >= num_classes {self.num_classes}")
        losses = self.layer_losses(outputs["pred_logits"], outputs["pred_masks"], targets)
        if self.settings.deep_supervision:
            for index, aux in enumerate(outputs["aux_outputs"]):
                aux_losses = self.layer_losses(aux["pred_logits"], aux["pred_masks"], targets)
                losses.update({f"{name}_aux{index}": value for name, value in aux_losses.items()})
        if self.pair_losses is not None:
            pair_losses = self.pair_losses(
                outputs["mask_features"], outputs["pred_logits"], outputs["pred_masks"], targets, generator
            )
            losses["loss_sim"] = self.settings.sim_weight * pair_losses["loss_sim"]
            if "loss_distill" in pair_losses:
                losses["loss_distill"] = self.settings.distill_weight * pair_losses["loss_distill"]
        return losses

    def layer_losses(
        self, pred_logits: Tensor, pred_masks: Tensor, targets: Sequence[ImageTargets]
    ) -> dict[str, Tensor]:
        """Weighted CE, focal, dice (and complementary) terms of one decoder layer.

        pred_logits (B, Q, K+1), pred_masks (B, Q, h, w); computed in float32 whatever the
        autocast dtype, since focal terms underflow in bfloat16.
        """
        pred_logits, pred_masks = pred_logits.float(), pred_masks.float()
        matches = self.matcher(pred_logits, pred_masks, targets)
        settings = self.settings
        losses = {"loss_ce": settings.class_weight * self._classification(pred_logits, matches, targets)}
        focal, dice = self._mask_losses(pred_masks, matches, targets)
        losses["loss_focal"] = settings.mask_focal_weight * focal
        losses["loss_dice"] = settings.dice_weight * dice
        if settings.complementary:
            losses["loss_comp"] = settings.complementary_weight * self._complementary(pred_masks, matches, targets)
        return losses

    def _classification(
        self, pred_logits: Tensor, matches: list[tuple[Tensor, Tensor]], targets: Sequence[ImageTargets]
    ) -> Tensor:
        target_classes = torch.full(pred_logits.shape[:2], self.num_classes, device=pred_logits.device)
        for image, (queries, indices) in enumerate(matches):
            target_classes[image, queries] = targets[image].classes[indices]
        return F.cross_entropy(pred_logits.transpose(1, 2), target_classes, weight=self.class_weights)

    def _mask_losses(
        self, pred_masks: Tensor, matches: list[tuple[Tensor, Tensor]], targets: Sequence[ImageTargets]
    ) -> tuple[Tensor, Tensor]:
        predicted, wanted = [], []
        for image, (queries, indices) in enumerate(matches):
            with_mask = targets[image].has_mask[indices]
            if bool(with_mask.any()):
                size = tuple(targets[image].masks.shape[-2:])
                predicted.append(_upsample(pred_masks[image, queries[with_mask]], size).flatten(1))
                wanted.append(targets[image].masks[indices[with_mask]].flatten(1).float())
        if not predicted:
            # Zero that keeps the mask head in the graph (distributed training needs every
            # parameter to get a gradient each step).
            zero = pred_masks.sum() * 0
            return zero, zero
        num_masks = max(sum(int(t.has_mask.sum()) for t in targets), 1)
        predicted_t, wanted_t = torch.cat(predicted), torch.cat(wanted)
        alpha, gamma = self.settings.focal_alpha, self.settings.focal_gamma
        focal = sigmoid_focal_loss(predicted_t, wanted_t, alpha, gamma).sum() / num_masks
        return focal, dice_loss(predicted_t, wanted_t).sum() / num_masks

    def _complementary(
        self, pred_masks: Tensor, matches: list[tuple[Tensor, Tensor]], targets: Sequence[ImageTargets]
    ) -> Tensor:
        per_image = []
        for image, (queries, indices) in enumerate(matches):
            target = targets[image]
            if bool(target.has_mask.all()):
                continue  # nothing unknown to cover in this image
            novel_queries = queries[~target.has_mask[indices]]
            non_base = (target.base_label < 0) & ~target.pad
            per_image.append(complementary_loss(
                _upsample(pred_masks[image, novel_queries], tuple(non_base.shape)),
                non_base,
                floor_logit=self.settings.complementary_floor_logit,
                focal_weight=self.settings.mask_focal_weight,
                dice_weight=self.settings.dice_weight,
                alpha=self.settings.focal_alpha,
                gamma=self.settings.focal_gamma,
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
