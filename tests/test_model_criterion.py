"""The whole objective: target building, loss terms and weights, ablations, backward, reproducibility."""

from __future__ import annotations

import math

import pytest
import torch

from simformer_cli.model.criterion import SetCriterion, build_criterion, count_masks, total_loss
from simformer_cli.model.losses import dice_loss, sigmoid_focal_loss
from simformer_cli.model.maskformer import build_model
from simformer_cli.settings.model import LossSettings, tiny_model_settings
from simformer_cli.model.targets import NOT_BASE, ImageTargets, targets_from_label_map

from model_reference import complementary_loss, match

NUM_CLASSES = 6
BASE = [0, 1, 2, 3]
NOVEL = [4, 5]
IGNORE = 255
LAYER_TERMS = {"loss_ce", "loss_focal", "loss_dice", "loss_comp"}


def weak_targets(index: int, size: int, novel: list[int], pad_columns: int = 8) -> ImageTargets:
    """A crop whose top half is base class (index % 4), bottom left base 3, bottom right unknown."""
    label = torch.full((size, size), IGNORE)
    label[: size // 2] = index % 4
    label[size // 2 :, : size // 2] = 3
    pad = torch.zeros(size, size, dtype=torch.bool)
    pad[:, size - pad_columns :] = True
    label[pad] = IGNORE
    return targets_from_label_map(label, pad, base_classes=BASE, maskless_classes=novel, ignore_index=IGNORE)


def test_targets_from_a_weak_label_map():
    label = torch.tensor([[0, 0, 255, 255], [2, 2, 255, 255], [2, 2, 255, 255], [255, 255, 255, 255]])
    pad = torch.zeros(4, 4, dtype=torch.bool)
    pad[3] = True
    targets = targets_from_label_map(label, pad, base_classes=BASE, maskless_classes=[5, 2], ignore_index=IGNORE)
    targets.validate()
    assert targets.classes.tolist() == [0, 2, 5]  # class 2 has pixels, so it is not maskless
    assert targets.has_mask.tolist() == [True, True, False]
    assert targets.masks[1].sum() == 4 and not targets.masks[2].any()
    assert targets.base_label[0].tolist() == [0, 0, NOT_BASE, NOT_BASE]
    assert targets.image_classes.tolist() == [0, 2, 5]


def test_targets_for_retraining_have_masks_for_every_class():
    label = torch.tensor([[0, 4], [4, 255]])
    targets = targets_from_label_map(
        label, torch.zeros(2, 2, dtype=torch.bool), base_classes=BASE, maskless_classes=[], ignore_index=IGNORE
    )
    assert targets.classes.tolist() == [0, 4] and bool(targets.has_mask.all())
    assert targets.base_label.tolist() == [[0, NOT_BASE], [NOT_BASE, NOT_BASE]]  # novel pixels never base


def test_targets_when_base_ids_exceed_every_label_value():
    # Classes are counted up to the largest value in the map; base ids above it are simply absent.
    label = torch.tensor([[1, 1], [0, 1]])
    targets = targets_from_label_map(label, torch.tensor([[False, False], [False, True]]), base_classes=[1, 9],
                                     maskless_classes=[7], ignore_index=IGNORE)
    assert targets.classes.tolist() == [0, 1, 7] and targets.has_mask.tolist() == [True, True, False]
    assert targets.base_label.tolist() == [[1, 1], [NOT_BASE, NOT_BASE]]  # 0 is not base; padding never is


def test_validate_rejects_a_maskless_target_with_pixels():
    targets = weak_targets(0, 16, [4])
    broken = ImageTargets(**{**targets.__dict__, "masks": torch.ones_like(targets.masks)})
    with pytest.raises(ValueError, match="has_mask=False"):
        broken.validate()


def _hand_outputs(queries: int = 3, size: int = 4) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "pred_logits": torch.randn(2, queries, NUM_CLASSES + 1, generator=generator),
        "pred_masks": torch.randn(2, queries, size, size, generator=generator),
        "aux_outputs": [],
        "mask_features": torch.randn(2, 8, size, size, generator=generator),
    }


def test_layer_terms_follow_the_formulas_and_weights():
    settings = LossSettings(similarity=False, distillation=False)
    criterion = SetCriterion(num_classes=NUM_CLASSES, mask_dim=8, novel_classes=NOVEL, settings=settings)
    outputs = _hand_outputs()
    targets = [weak_targets(0, 8, [4], pad_columns=2), weak_targets(1, 8, [], pad_columns=2)]
    losses = criterion(outputs, targets, torch.Generator())
    assert set(losses) == LAYER_TERMS

    matches = match(criterion.matcher, outputs["pred_logits"], outputs["pred_masks"], targets)
    upsample = lambda m: torch.nn.functional.interpolate(m[:, None], size=(8, 8), mode="bilinear")[:, 0]
    focal, dice, comp = 0.0, 0.0, []
    for image, (queries, indices) in enumerate(matches):
        target = targets[image]
        with_mask = target.has_mask[indices]
        predicted = upsample(outputs["pred_masks"][image, queries[with_mask]]).flatten(1)
        wanted = target.masks[indices[with_mask]].flatten(1).float()
        focal += sigmoid_focal_loss(predicted, wanted).sum()
        dice += dice_loss(predicted, wanted).sum()
        if not bool(target.has_mask.all()):
            novel_logits = upsample(outputs["pred_masks"][image, queries[~with_mask]])
            non_base = (target.base_label < 0) & ~target.pad
            comp.append(complementary_loss(novel_logits, non_base, floor_logit=-2.9444, focal_weight=20, dice_weight=1))
    num_masks = 2 + 2  # has-mask targets in the batch: (class 0, class 3) and (class 1, class 3)
    torch.testing.assert_close(losses["loss_focal"], 20 * focal / num_masks)
    torch.testing.assert_close(losses["loss_dice"], dice / num_masks)
    assert len(comp) == 1  # only the first image has a maskless target
    torch.testing.assert_close(losses["loss_comp"], 0.2 * comp[0] / (1 + 1e-5))
    assert total_loss(losses).item() == pytest.approx(sum(v.item() for v in losses.values()), rel=1e-6)


def test_classification_targets_matched_and_unmatched_queries():
    settings = LossSettings(similarity=False, distillation=False, complementary=False)
    criterion = SetCriterion(num_classes=NUM_CLASSES, mask_dim=8, novel_classes=NOVEL, settings=settings)
    outputs = _hand_outputs()
    targets = [weak_targets(0, 8, [4]), weak_targets(1, 8, [5])]
    matches = match(criterion.matcher, outputs["pred_logits"], outputs["pred_masks"], targets)
    wanted = torch.full((2, 3), NUM_CLASSES)
    for image, (queries, indices) in enumerate(matches):
        wanted[image, queries] = targets[image].classes[indices]
    weights = torch.ones(NUM_CLASSES + 1)
    weights[-1] = 0.1
    expected = torch.nn.functional.cross_entropy(outputs["pred_logits"].transpose(1, 2), wanted, weight=weights)
    torch.testing.assert_close(criterion(outputs, targets, torch.Generator())["loss_ce"], expected)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    settings = tiny_model_settings(NUM_CLASSES)
    return settings, build_model(settings)


def _run(tiny, targets, batch_images: torch.Tensor, seed: int = 0, **loss_overrides):
    settings, model = tiny
    torch.manual_seed(1)  # the similarity net's initialisation
    criterion = build_criterion(settings, LossSettings(**loss_overrides), novel_classes=NOVEL)
    model.zero_grad()
    losses = criterion(model(batch_images), targets, torch.Generator().manual_seed(seed))
    return criterion, losses


def test_full_objective_with_novel_targets_and_shared_novel_classes(tiny):
    targets = [weak_targets(i, 64, [4, 5] if i < 2 else [4]) for i in range(4)]
    criterion, losses = _run(tiny, targets, torch.randn(4, 3, 64, 64))
    aux = {f"{name}_aux{i}" for name in LAYER_TERMS for i in range(2)}
    assert set(losses) == LAYER_TERMS | aux | {"loss_sim", "loss_distill"}
    assert all(math.isfinite(v.item()) for v in losses.values())
    assert losses["loss_comp"] > 0 and losses["loss_distill"] != 0
    total_loss(losses).backward()
    _, model = tiny
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing  # every parameter is used: data-parallel training needs no special flags
    assert criterion.pair_losses.simnet.head.weight.grad.abs().sum() > 0


def test_pairs_without_a_shared_novel_class_get_no_distillation(tiny):
    targets = [weak_targets(0, 64, [4]), weak_targets(1, 64, [5]), weak_targets(2, 64, []), weak_targets(3, 64, [])]
    _, losses = _run(tiny, targets, torch.randn(4, 3, 64, 64))
    assert losses["loss_distill"].item() == 0.0
    total_loss(losses).backward()


def test_plain_supervised_retraining_mode(tiny):
    # Retraining: every class has a mask and no pairs are needed: an odd batch is fine.
    targets = [weak_targets(i, 64, []) for i in range(3)]
    _, losses = _run(tiny, targets, torch.randn(3, 3, 64, 64), similarity=False, distillation=False)
    assert "loss_sim" not in losses and "loss_distill" not in losses
    assert losses["loss_comp"].item() == 0.0  # nothing unknown to cover
    total_loss(losses).backward()


@pytest.mark.parametrize(
    ("overrides", "absent"),
    [
        ({"complementary": False}, {"loss_comp", "loss_comp_aux0"}),
        ({"distillation": False}, {"loss_distill"}),
        ({"deep_supervision": False}, {"loss_ce_aux0", "loss_focal_aux1"}),
    ],
)
def test_ablation_switches_remove_their_terms(tiny, overrides, absent):
    targets = [weak_targets(i, 64, [4]) for i in range(2)]
    _, losses = _run(tiny, targets, torch.randn(2, 3, 64, 64), **overrides)
    assert not absent & set(losses)
    assert "loss_ce" in losses and "loss_sim" in losses


def test_same_generator_same_losses(tiny):
    targets = [weak_targets(i, 64, [4]) for i in range(2)]
    images = torch.randn(2, 3, 64, 64)
    first = _run(tiny, targets, images, seed=5)[1]
    second = _run(tiny, targets, images, seed=5)[1]
    other = _run(tiny, targets, images, seed=6)[1]
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert first["loss_sim"] != other["loss_sim"]  # different sampled points


def test_bad_targets_are_rejected(tiny):
    images = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match="2 images"):
        _run(tiny, [weak_targets(0, 64, [4])], images)
    with pytest.raises(ValueError, match="num_classes"):
        _run(tiny, [weak_targets(0, 64, [NUM_CLASSES]), weak_targets(1, 64, [])], images)


def test_batch_of_eight_at_128_trains_and_the_loss_falls():
    torch.manual_seed(0)
    settings = tiny_model_settings(NUM_CLASSES)
    model = build_model(settings)
    criterion = build_criterion(settings, LossSettings(), novel_classes=NOVEL)
    optimizer = torch.optim.AdamW([*model.parameters(), *criterion.parameters()], lr=1e-4)  # the paper's
    targets = [weak_targets(i, 128, [4, 5] if i % 4 < 2 else [5]) for i in range(8)]
    images = torch.randn(8, 3, 128, 128)
    history = []
    for _ in range(5):
        # The same sampled points every step, so only the weights change the loss.
        losses = criterion(model(images), targets, torch.Generator().manual_seed(0))
        loss = total_loss(losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert all(math.isfinite(value) for value in history)
    # Over a few steps, not step by step: a step can move a match and lift the loss for a step
    # (16.0, 13.8, 14.1, 13.8, 13.4 with the preset's backbone when this was written).
    assert history[-1] < 0.95 * history[0] and max(history[1:]) < history[0]


def test_mask_terms_of_micro_batches_add_up_to_the_whole_batch():
    # The loop gives each micro-batch the whole batch's mask count divided by the number of
    # micro-batches; the mean of their focal/dice terms is then the whole batch's term.
    criterion = SetCriterion(num_classes=NUM_CLASSES, mask_dim=8, novel_classes=NOVEL,
                             settings=LossSettings(similarity=False, distillation=False))
    outputs = _hand_outputs(queries=4, size=8)
    extra = _hand_outputs(queries=4, size=8)
    outputs = {key: torch.cat((outputs[key], extra[key])) if key != "aux_outputs" else [] for key in outputs}
    targets = [weak_targets(0, 32, [4]), weak_targets(1, 32, []), weak_targets(2, 32, [5]),
               _single_class_targets(32)]
    whole = criterion(outputs, targets, torch.Generator())
    halves = [criterion({key: (value[part * 2: part * 2 + 2] if key != "aux_outputs" else []) for key, value in
                         outputs.items()}, targets[part * 2: part * 2 + 2], torch.Generator(),
                        num_masks=count_masks(targets) / 2) for part in (0, 1)]
    assert count_masks(targets[:2]) != count_masks(targets[2:])  # so the default would differ
    for name in ("loss_focal", "loss_dice"):
        torch.testing.assert_close((halves[0][name] + halves[1][name]) / 2, whole[name])


def _single_class_targets(size: int) -> ImageTargets:
    label = torch.full((size, size), 2)
    return targets_from_label_map(label, torch.zeros(size, size, dtype=torch.bool), base_classes=BASE,
                                  maskless_classes=[], ignore_index=IGNORE)


@pytest.mark.parametrize("mask_points", [None, 48])
def test_layers_batched_together_give_each_layer_its_own_terms(mask_points):
    # The criterion gathers every decoder layer's matched masks into one batch; each layer's terms
    # must be what that layer alone would get (with points: the same estimate, other draws).
    settings = LossSettings(similarity=False, distillation=False, mask_points=mask_points)
    criterion = SetCriterion(num_classes=NUM_CLASSES, mask_dim=8, novel_classes=NOVEL, settings=settings)
    layers = [_hand_outputs(queries=5, size=8) for _ in range(3)]
    for number, layer in enumerate(layers):  # distinct layers
        layer["pred_masks"] = layer["pred_masks"] * (1 + number) + number
    outputs = {**layers[0], "aux_outputs": [{k: layer[k] for k in ("pred_logits", "pred_masks")} for layer in layers[1:]]}
    targets = [weak_targets(0, 32, [4, 5]), weak_targets(1, 32, [])]
    together = criterion(outputs, targets, torch.Generator().manual_seed(0))
    assert set(together) == LAYER_TERMS | {f"{name}_aux{i}" for name in LAYER_TERMS for i in range(2)}
    for number, layer in enumerate(layers):
        alone = criterion({**layer, "aux_outputs": []}, targets, torch.Generator().manual_seed(0))
        suffix = "" if number == 0 else f"_aux{number - 1}"
        for name in LAYER_TERMS:
            if mask_points is None or name == "loss_ce":
                torch.testing.assert_close(together[name + suffix], alone[name], msg=name + suffix)
            else:
                assert float(together[name + suffix]) == pytest.approx(float(alone[name]), rel=0.5), name + suffix
    assert len({float(together[f"loss_comp{s}"]) for s in ("", "_aux0", "_aux1")}) == 3


def test_maskless_targets_left_without_a_query_still_get_the_complementary_floor():
    # Two queries for four targets: the image's novel targets may go unmatched; the union is then
    # the floor alone, and the loss is that of an all-floor prediction.
    settings = LossSettings(similarity=False, distillation=False, match_focal_weight=0, match_dice_weight=0)
    criterion = SetCriterion(num_classes=NUM_CLASSES, mask_dim=8, novel_classes=NOVEL, settings=settings)
    outputs = _hand_outputs(queries=2, size=8)
    outputs["pred_logits"][:, :, :4] = 50.0  # every query is sure of a base class
    targets = [weak_targets(0, 16, [4, 5]), weak_targets(1, 16, [4, 5])]
    matches = match(criterion.matcher, outputs["pred_logits"], outputs["pred_masks"], targets)
    assert all(bool(targets[i].has_mask[indices].all()) for i, (_, indices) in enumerate(matches))
    losses = criterion(outputs, targets, torch.Generator())
    expected = [complementary_loss(torch.empty(0, 16, 16), (t.base_label < 0) & ~t.pad, floor_logit=-2.9444,
                                   focal_weight=20, dice_weight=1) for t in targets]
    torch.testing.assert_close(losses["loss_comp"], 0.2 * sum(expected) / (2 + 1e-5))


def test_novel_partition_terms_follow_their_formulas_and_leave_the_rest_unchanged():
    settings = LossSettings(similarity=False, distillation=False, partition=True, partition_overlap_weight=2.0,
                            partition_presence_weight=0.5, partition_presence_share=0.25)
    criterion = SetCriterion(num_classes=NUM_CLASSES, mask_dim=8, novel_classes=NOVEL, settings=settings)
    outputs = _hand_outputs(size=8)
    targets = [weak_targets(0, 16, [4, 5], pad_columns=4), weak_targets(1, 16, [], pad_columns=4)]
    losses = criterion(outputs, targets, torch.Generator())
    assert set(losses) == LAYER_TERMS | {"loss_overlap", "loss_presence"}
    plain = SetCriterion(num_classes=NUM_CLASSES, mask_dim=8, novel_classes=NOVEL,
                         settings=LossSettings(similarity=False, distillation=False))(outputs, targets, torch.Generator())
    assert all(torch.equal(losses[name], plain[name]) for name in LAYER_TERMS)

    (queries, indices), _ = match(criterion.matcher, outputs["pred_logits"], outputs["pred_masks"], targets)
    novel = queries[~targets[0].has_mask[indices]]
    assert len(novel) == 2
    probs = outputs["pred_masks"][0, novel].sigmoid().flatten(1)  # (2, 64) at the masks' 8x8
    # The non-base region at 8x8: the bottom-right quarter of the 16x16 crop, less the 4 padded columns.
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[4:, 4:6] = True
    region = region.flatten()
    overlap = (probs.sum(0) - probs.amax(0))[region].mean()
    top = probs[:, region].sort(dim=1, descending=True).values[:, :2].mean(1)  # a quarter of 8 pixels
    torch.testing.assert_close(losses["loss_overlap"], 2.0 * overlap / 1)  # one image with novel targets
    torch.testing.assert_close(losses["loss_presence"], 0.5 * -top.log().mean())


def test_novel_partition_settings_are_recorded_only_when_it_is_on():
    assert not any(key.startswith("partition") for key in LossSettings().model_dump())
    on = LossSettings(partition=True).model_dump()
    assert on["partition"] is True and on["partition_presence_share"] == 0.01
    assert "partition_overlap_weight" in LossSettings().model_dump(context={"every_setting": True})


def test_novel_mil_term_reads_the_image_labels_of_weak_images_only():
    settings = LossSettings(similarity=False, distillation=False, novel_mil=True, novel_mil_share=0.25,
                            novel_mil_weight=3.0)
    criterion = SetCriterion(num_classes=NUM_CLASSES, mask_dim=8, novel_classes=NOVEL, settings=settings)
    outputs = _hand_outputs(size=8)
    targets = [weak_targets(0, 16, [4], pad_columns=4), weak_targets(1, 16, [], pad_columns=4)]
    losses = criterion(outputs, targets, torch.Generator())
    assert set(losses) == LAYER_TERMS | {"loss_mil"}
    scores = torch.einsum("qn,qp->np", outputs["pred_logits"][0].softmax(-1)[:, NOVEL],
                          outputs["pred_masks"][0].sigmoid().flatten(1))  # image 0: novel 4 present, 5 absent
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[4:, 4:6] = True
    inside = scores[:, region.flatten()]
    expected = -inside[0].sort(descending=True).values[:2].mean().log() - torch.log1p(-inside[1]).mean()
    torch.testing.assert_close(losses["loss_mil"], 3.0 * expected)
