"""The SimFormer training objective: the MaskFormer set losses plus the weak-shot terms.

For the last decoder layer and, with deep supervision, every earlier one ("_aux{i}" suffix):
- "loss_ce":    CE over K+1 classes for all queries (matched -> target class, base or novel;
                unmatched -> no object, weight 0.1);
- "loss_focal", "loss_dice": sigmoid focal and dice of queries matched to targets with a mask,
                normalised by the number of such targets in the batch;
- "loss_comp":  the complementary loss of images with maskless (novel) targets;
- "loss_overlap", "loss_presence": with ``partition``, the novel partition of those images.
For the last layer, with ``novel_mil``: "loss_mil", the image-label MIL term on the novel scores.
For the last layer only, with the batch laid out as image pairs: "loss_sim" (similarity net on
base pixels) and "loss_distill" (its judgement distilled into novel-class scores). With
``regularizer="dfr"``, for the last layer: "loss_dfr", the regularized loss of model/regularizer.py.

Every returned term is already multiplied by its weight, so the logged terms add up to the loss
being optimised: ``total_loss(losses)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simformer_cli.model.losses import (
    complementary_terms,
    dice_loss,
    novel_mil_terms,
    overlap_terms,
    presence_terms,
    sigmoid_focal_loss,
)
from simformer_cli.model.elimination import EliminationMemory, elimination_terms, unit_features
from simformer_cli.model.matcher import HungarianMatcher, small_target_masks
from simformer_cli.model.pair_losses import PairLosses, sample_regions
from simformer_cli.model.points import point_sample, shared_uncertain_points
from simformer_cli.model.regularizer import dfr_loss
from simformer_cli.settings.model import LossSettings, ModelSettings
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
        self.register_buffer("novel_classes", torch.as_tensor(list(novel_classes), dtype=torch.int64), persistent=False)
        class_weights = torch.ones(num_classes + 1)
        class_weights[-1] = settings.no_object_weight
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.pair_losses = (
            PairLosses(mask_dim=mask_dim, novel_classes=novel_classes, settings=settings)
            if settings.similarity
            else None
        )
        self.elimination = (
            EliminationMemory(len(novel_classes), settings.elimination_memory, mask_dim) if settings.elimination else None
        )

    def forward(
        self,
        outputs: Mapping[str, Tensor | list[dict[str, Tensor]]],
        targets: Sequence[ImageTargets],
        generator: torch.Generator,
        num_masks: float | None = None,
        images: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """outputs: MaskFormer.forward's dict; targets: one ImageTargets per image (same order).

        ``generator`` (a CPU torch.Generator) drives all point sampling. With similarity on, the
        batch must be consecutive pairs [a0, b0, a1, b1, ...]. ``num_masks`` divides the focal and
        dice sums; by default the number of targets with a mask in ``targets``. The training loop
        passes the global batch's count divided by its number of micro-batches (processes x
        accumulation), so that averaging the micro-batches' gradients gives the sum over the
        whole batch divided by its count, as with one process (MaskFormer's all-reduced count).
        ``images`` (B, 3, H, W), RGB 0..255 before normalisation, are read by the regularizer only
        (required when it is on).
        """
        if len(targets) != outputs["pred_logits"].shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {outputs['pred_logits'].shape[0]} images")
        for target in targets:
            target.validate()
        classes = torch.cat([target.classes for target in targets]) if targets else torch.empty(0)
        largest = int(classes.max()) if len(classes) else -1
        if largest >= self.num_classes:
            raise ValueError(f"target class {largest} >= num_classes {self.num_classes}")
        # Every layer is matched against the same targets at the same size: downsample them once.
        small = small_target_masks(targets, tuple(outputs["pred_masks"].shape[-2:]))
        layers = [(outputs["pred_logits"], outputs["pred_masks"])]
        if self.settings.deep_supervision:
            layers += [(aux["pred_logits"], aux["pred_masks"]) for aux in outputs["aux_outputs"]]
        # float32 whatever the autocast dtype: focal terms underflow in bfloat16.
        pred_logits = torch.stack([logits for logits, _ in layers]).float()  # (L, B, Q, K+1)
        pred_masks = torch.stack([masks for _, masks in layers]).float()  # (L, B, Q, h, w)
        matches = self.matcher.match_layers(pred_logits, pred_masks, targets, small)  # each layer matched on its own
        terms = self.layer_terms(pred_logits, pred_masks, matches, targets, generator, num_masks)
        losses: dict[str, Tensor] = {}
        for index in range(len(layers)):
            suffix = "" if index == 0 else f"_aux{index - 1}"
            losses.update({f"{name}{suffix}": values[index] for name, values in terms.items()})
        if self.pair_losses is not None:
            pair_losses = self.pair_losses(
                outputs["mask_features"], outputs["pred_logits"], outputs["pred_masks"], targets, generator
            )
            losses["loss_sim"] = self.settings.sim_weight * pair_losses["loss_sim"]
            if "loss_distill" in pair_losses:
                losses["loss_distill"] = self.settings.distill_weight * pair_losses["loss_distill"]
        if self.settings.novel_mil:
            losses["loss_mil"] = self.settings.novel_mil_weight * self._novel_mil(
                outputs["pred_logits"], outputs["pred_masks"], targets)
        if self.elimination is not None:
            losses["loss_elim"] = self.settings.elimination_weight * self._elimination(outputs, targets, generator)
        if self.settings.regularizer == "dfr":
            losses["loss_dfr"] = self.settings.dfr_weight * self._regularizer(outputs, targets, generator, images)
        return losses

    def _novel_mil(self, pred_logits: Tensor, pred_masks: Tensor, targets: Sequence[ImageTargets]) -> Tensor:
        """The image-label MIL term of the last layer on the novel classes' semantic scores
        S_n = sum_q softmax(z_q)[n] sigmoid(m_q), inside each weak image's non-base region."""
        device = pred_masks.device
        novel = self.novel_classes.to(device)
        weak = [i for i, target in enumerate(targets) if not bool(target.has_mask.all())]
        if not weak or not len(novel):
            return pred_masks.sum() * 0
        logits, masks = pred_logits[weak].float(), pred_masks[weak].float()
        classes = logits.softmax(-1)[..., novel]  # (W, Q, N)
        scores = torch.einsum("bqn,bqp->bnp", classes, masks.sigmoid().flatten(2))
        region = _non_base_region([targets[i] for i in weak], tuple(masks.shape[-2:]), device)
        labelled = torch.stack([torch.isin(novel, targets[i].image_classes.to(device)) for i in weak])
        return novel_mil_terms(scores, region, labelled, ~labelled, self.settings.novel_mil_share)

    def _elimination(self, outputs: Mapping[str, Tensor | list[dict[str, Tensor]]], targets: Sequence[ImageTargets],
                     generator: torch.Generator) -> Tensor:
        """Naming by elimination on the last layer (model/elimination.py): the mean over images with
        novel targets of their term; then every image's sampled features join the memories of
        the novel classes its label lacks."""
        assert self.elimination is not None
        masks, logits = outputs["pred_masks"].float(), outputs["pred_logits"].float()
        features = outputs["mask_features"].flatten(2)
        device = masks.device
        novel = self.novel_classes.to(device)
        region = _non_base_region(targets, tuple(masks.shape[-2:]), device)
        points = sample_regions(region[:, None], self.settings.elimination_points, generator)
        terms, updates = [], []
        for image, target in enumerate(targets):
            if int(points[image, 0]) < 0:
                continue  # no non-base pixel in this crop
            present = torch.isin(novel, target.image_classes.to(device))
            unit = unit_features(features[image], points[image])
            if present.any() and not bool(target.has_mask.all()):
                scores = logits[image].softmax(-1)[:, novel].T @ masks[image].flatten(1)[:, points[image]].sigmoid()
                terms.append(elimination_terms(self.elimination.similarity(unit), scores, present,
                                               self.settings.elimination_share,
                                               self.settings.elimination_naming_share))
            updates.append((unit, (~present).nonzero().flatten().tolist()))
        for unit, absent in updates:  # after every term: no image is compared with itself
            for cls in absent:
                self.elimination.add(cls, unit)
        return torch.stack(terms).mean() if terms else masks.sum() * 0

    def _regularizer(self, outputs: Mapping[str, Tensor | list[dict[str, Tensor]]], targets: Sequence[ImageTargets],
                     generator: torch.Generator, images: Tensor | None) -> Tensor:
        if images is None:
            raise ValueError("the dfr regularizer needs the batch's images (criterion(..., images=...))")
        simnet = self.pair_losses.simnet if self.pair_losses is not None else None
        return dfr_loss(images=images, pred_logits=outputs["pred_logits"], pred_masks=outputs["pred_masks"],
                        mask_features=outputs["mask_features"], targets=targets, settings=self.settings,
                        generator=generator, simnet=simnet)

    def layer_terms(
        self,
        pred_logits: Tensor,
        pred_masks: Tensor,
        matches: Sequence[Sequence[tuple[Tensor, Tensor]]],
        targets: Sequence[ImageTargets],
        generator: torch.Generator,
        num_masks: float | None = None,
    ) -> dict[str, Tensor]:
        """Weighted CE, focal, dice (and complementary) terms of every decoder layer at once.

        pred_logits (L, B, Q, K+1) and pred_masks (L, B, Q, h, w) in float32; ``matches[l]`` the
        matcher's answer for layer l. Returns each term as an (L,) tensor. The layers' matched
        masks are gathered into one batch, so upsampling (or point sampling), focal, dice and the
        complementary unions each run once per step instead of once per layer and image.
        """
        settings = self.settings
        rows = _MatchedRows.gather(matches, targets)
        count = max(count_masks(targets) if num_masks is None else num_masks, 1.0)
        # A zero per layer that keeps the mask head in the graph when a term has nothing to sum
        # (distributed training needs every parameter to get a gradient each step).
        zero = pred_masks.sum(dim=(1, 2, 3, 4)) * 0
        losses = {"loss_ce": settings.class_weight * self._classification(pred_logits, rows)}
        focal, dice = self._mask_losses(pred_masks, rows, generator, count, zero)
        losses["loss_focal"] = settings.mask_focal_weight * focal
        losses["loss_dice"] = settings.dice_weight * dice
        if settings.complementary:
            losses["loss_comp"] = settings.complementary_weight * self._complementary(
                pred_masks, rows, targets, generator, zero)
        if settings.partition:
            overlap, presence = self._partition(pred_masks, rows, targets, zero)
            losses["loss_overlap"] = settings.partition_overlap_weight * overlap
            losses["loss_presence"] = settings.partition_presence_weight * presence
        return losses

    def _partition(self, pred_masks: Tensor, rows: _MatchedRows, targets: Sequence[ImageTargets],
                   zero: Tensor) -> tuple[Tensor, Tensor]:
        """The novel partition, per layer -> (L,), (L,): the mean over images with maskless targets
        of the overlap of the masks matched to those targets, and the mean over those masks of
        their presence term; at the masks' resolution, inside each image's non-base region (the
        pixels that are mostly neither base-labelled nor padding)."""
        novel = ~rows.has_mask
        if not bool(novel.any()):
            return zero, zero
        layers, batch = pred_masks.shape[:2]
        device = pred_masks.device
        layer, image = rows.layer[novel].to(device), rows.image[novel].to(device)
        probs = pred_masks[layer, image, rows.query[novel].to(device)].sigmoid().flatten(1)  # (n, h*w)
        region = _non_base_region(targets, tuple(pred_masks.shape[-2:]), device)
        presence = zero.index_add(0, layer, presence_terms(probs, region[image], self.settings.partition_presence_share))
        presence = presence / torch.bincount(layer, minlength=layers).clamp(min=1)
        # One group per (layer, image); images without novel targets have only the zero row.
        table = _union_table((layer * batch + image).cpu(), layers * batch).to(device)
        padded = torch.cat((probs, probs.new_zeros(1, probs.shape[1])))[table]  # (L * B, S, h*w)
        overlap = overlap_terms(padded, region.repeat(layers, 1)).view(layers, batch).sum(1)
        unknown = sum(1 for target in targets if not bool(target.has_mask.all()))
        return overlap / max(unknown, 1), presence

    def _classification(self, pred_logits: Tensor, rows: _MatchedRows) -> Tensor:
        """CE of every query with weight 0.1 on no-object, a weighted mean per layer -> (L,)."""
        layers, batch, queries = pred_logits.shape[:3]
        target_classes = torch.full((layers, batch, queries), self.num_classes, device=pred_logits.device)
        target_classes[rows.layer, rows.image, rows.query] = rows.classes
        weighted = F.cross_entropy(pred_logits.flatten(0, 2), target_classes.flatten(), weight=self.class_weights,
                                   reduction="none").view(layers, -1)
        return weighted.sum(1) / self.class_weights[target_classes].view(layers, -1).sum(1)

    def _mask_losses(
        self, pred_masks: Tensor, rows: _MatchedRows, generator: torch.Generator, num_masks: float, zero: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Focal and dice summed over each layer's queries matched to a target with a mask,
        divided by ``num_masks`` -> (L,) each; ``zero`` (L,) keeps the graph when there is none."""
        masked = rows.has_mask
        if not bool(masked.any()):
            return zero, zero
        layer, target = rows.layer[masked], rows.target[masked]
        predicted = pred_masks[layer, rows.image[masked], rows.query[masked]]  # (N, h, w)
        settings = self.settings
        if settings.mask_points is None:
            wanted = rows.target_masks[target].float()  # (N, H, W)
            predicted_t = _upsample(predicted, tuple(wanted.shape[-2:])).flatten(1)
            wanted_t = wanted.flatten(1)
        else:
            # A target's matches in every decoder layer share its random points (each keeps the
            # candidates where it is itself least certain), so each target mask is read once.
            kept, draw_of = torch.unique(target, return_inverse=True)
            points = shared_uncertain_points(predicted, draw_of, len(kept), settings.mask_points,
                                             oversample_ratio=settings.point_oversample_ratio,
                                             importance_ratio=settings.point_importance_ratio, generator=generator)
            predicted_t = point_sample(predicted, points.coords)
            wanted_t = points.read(point_sample(rows.target_masks[kept].float(), points.drawn))
        alpha, gamma = settings.focal_alpha, settings.focal_gamma
        focal = zero.index_add(0, layer, sigmoid_focal_loss(predicted_t, wanted_t, alpha, gamma))
        return focal / num_masks, zero.index_add(0, layer, dice_loss(predicted_t, wanted_t)) / num_masks

    def _complementary(
        self, pred_masks: Tensor, rows: _MatchedRows, targets: Sequence[ImageTargets], generator: torch.Generator,
        zero: Tensor,
    ) -> Tensor:
        """Per layer, the mean over images with maskless targets of the complementary loss of the
        union of the masks matched to those targets -> (L,)."""
        settings = self.settings
        layers, batch = pred_masks.shape[:2]
        unknown = [image for image, target in enumerate(targets) if not bool(target.has_mask.all())]
        if not unknown:
            return zero  # nothing unknown to cover in any image
        # A group is one (layer, image with something unknown); its union is the max of its
        # novel-matched masks and of the floor, taken through a (G, S) table of rows, where the
        # extra last row is the floor and pads groups with fewer masks.
        group_of = torch.full((layers, batch), -1, dtype=torch.int64)
        group_of[:, unknown] = torch.arange(layers * len(unknown)).view(layers, len(unknown))
        group_layer = torch.arange(layers).repeat_interleave(len(unknown))
        novel = ~rows.has_mask
        novel_layer, novel_image, novel_query = rows.layer[novel].cpu(), rows.image[novel].cpu(), rows.query[novel]
        novel_group = group_of[novel_layer, novel_image]
        table = _union_table(novel_group, len(group_layer))
        device = pred_masks.device
        table = table.to(device)
        # Group g covers image unknown[g % U]; the groups of one image (one per layer) share its
        # random points, so its non-base map is read once.
        group_unknown = torch.arange(len(unknown), device=device).repeat(layers)
        novel_masks = pred_masks[novel_layer.to(device), novel_image.to(device), novel_query]  # (n, h, w)
        non_base = torch.stack([(targets[i].base_label < 0) & ~targets[i].pad for i in unknown]).float()  # (U, H, W)
        floor = settings.complementary_floor_logit

        def union(values: Tensor) -> Tensor:  # (n, P) -> (G, P)
            return torch.cat((values, values.new_full((1, values.shape[1]), floor)))[table].amax(dim=1)

        if settings.mask_points is None:
            values = _upsample(novel_masks, tuple(non_base.shape[-2:])).flatten(1)
            wanted = non_base[group_unknown].flatten(1)
        else:
            # Points where each union (with its floor) is least certain; each novel mask is read
            # there, and the union taken of the point values as of the upsampled maps.
            coarse = union(novel_masks.flatten(1)).view(len(group_layer), *pred_masks.shape[-2:])
            points = shared_uncertain_points(coarse, group_unknown, len(unknown), settings.mask_points,
                                             oversample_ratio=settings.point_oversample_ratio,
                                             importance_ratio=settings.point_importance_ratio, generator=generator)
            wanted = points.read(point_sample(non_base, points.drawn))
            values = point_sample(novel_masks, points.coords[novel_group.to(device)])
        per_group = complementary_terms(union(values), wanted, focal_weight=settings.mask_focal_weight,
                                        dice_weight=settings.dice_weight, alpha=settings.focal_alpha,
                                        gamma=settings.focal_gamma)
        return zero.index_add(0, group_layer.to(device), per_group) / (len(unknown) + 1e-5)


def _non_base_region(targets: Sequence[ImageTargets], size: tuple[int, int], device: torch.device) -> Tensor:
    """(B, h*w) bool: the pixels of the masks' grid that are mostly neither base-labelled nor
    padding (area-downsampled), where the naming terms look."""
    non_base = torch.stack([(t.base_label < 0) & ~t.pad for t in targets]).float().to(device)
    return F.interpolate(non_base[:, None], size=size, mode="area").flatten(1) > 0.5


def _union_table(row_group: Tensor, groups: int) -> Tensor:
    """(G, S) indices of the rows of each group, padded with ``len(row_group)`` (the floor row);
    S = 1 + the largest group, so every group also meets the floor."""
    sizes = torch.bincount(row_group, minlength=groups) if len(row_group) else torch.zeros(groups, dtype=torch.int64)
    table = torch.full((groups, int(sizes.max()) + 1), len(row_group), dtype=torch.int64)
    if len(row_group):
        order = torch.argsort(row_group, stable=True)
        starts = torch.cumsum(sizes, 0) - sizes
        slot = torch.arange(len(row_group)) - starts[row_group[order]]
        table[row_group[order], slot] = order
    return table


@dataclass(frozen=True)
class _MatchedRows:
    """Every (layer, image, query) matched to a target, flattened over layers and images: the
    target's index into the batch's concatenated targets, its class and has-mask flag, and those
    concatenated full-resolution target masks (indexed only where a loss needs them)."""

    layer: Tensor
    image: Tensor
    query: Tensor
    target: Tensor
    classes: Tensor
    has_mask: Tensor
    target_masks: Tensor

    @classmethod
    def gather(cls, matches: Sequence[Sequence[tuple[Tensor, Tensor]]], targets: Sequence[ImageTargets]) -> _MatchedRows:
        device = targets[0].classes.device
        pairs = [pair for layer_matches in matches for pair in layer_matches]  # layer-major, then image
        counts = torch.tensor([len(queries) for queries, _ in pairs], device=device)
        which = torch.repeat_interleave(torch.arange(len(pairs), device=device), counts)  # layer * B + image
        layer, image = which // len(targets), which % len(targets)
        sizes = torch.tensor([len(t.classes) for t in targets], device=device)
        flat = torch.cat([indices for _, indices in pairs]) + (torch.cumsum(sizes, 0) - sizes)[image]
        classes = torch.cat([t.classes for t in targets])[flat]
        has_mask = torch.cat([t.has_mask for t in targets])[flat]
        return cls(layer, image, torch.cat([queries for queries, _ in pairs]), flat, classes, has_mask,
                   torch.cat([t.masks for t in targets]))


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
