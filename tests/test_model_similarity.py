"""Similarity net, point sampling, class balance and the pair losses on hand-built pairs."""

from __future__ import annotations

import math

import pytest
import torch

from simformer_cli.model.pair_losses import ClassBalance, PairLosses, sample_regions
from simformer_cli.settings.model import LossSettings
from simformer_cli.model.simnet import PairSimilarityNet
from simformer_cli.model.targets import NOT_BASE, ImageTargets

FEATURES = 8
NOVEL = [2, 3]
SIZE = 16  # input resolution; mask features are 8 x 8 (stride 2 here, any stride works)


def test_simnet_shapes_and_probabilities():
    net = PairSimilarityNet(FEATURES, 16)
    first, second = torch.randn(3, 5, FEATURES), torch.randn(3, 7, FEATURES)
    logits = net(first, second)
    assert logits.shape == (3, 5, 7, 2)
    probs = net.same_probability(first, second)
    assert probs.shape == (3, 5, 7)
    assert torch.all((probs >= 0) & (probs <= 1))
    torch.testing.assert_close(probs, logits.softmax(-1)[..., 1])


def test_simnet_equals_the_mlp_on_concatenated_pairs():
    # The first layer is applied per point and broadcast; it must equal the per-pair MLP on [f_i; f_j].
    net = PairSimilarityNet(FEATURES, 16)
    first, second = torch.randn(1, 4, FEATURES), torch.randn(1, 6, FEATURES)
    pairs = torch.cat((first[0][:, None].expand(4, 6, FEATURES), second[0][None].expand(4, 6, FEATURES)), -1)
    x = pairs.reshape(24, 2 * FEATURES)
    for block in net.blocks:
        x = block(x)
    torch.testing.assert_close(net(first, second), net.head(x).view(1, 4, 6, 2))
    swapped = net(second, first).transpose(1, 2)
    assert not torch.allclose(swapped, net(first, second))  # order-sensitive, hence both orders


def test_sample_regions_draws_inside_the_first_non_empty_region_of_each_row():
    large = torch.zeros(100, dtype=torch.bool)
    large[10:60] = True
    small = torch.zeros(100, dtype=torch.bool)
    small[[3, 7]] = True
    empty = torch.zeros(100, dtype=torch.bool)
    regions = torch.stack([
        torch.stack([large, small]),  # large is tried first
        torch.stack([small, large]),  # small is not empty, so it is used: with replacement
        torch.stack([empty, small]),  # falls back to small
        torch.stack([empty, empty]),  # nothing to draw from
    ])
    points = sample_regions(regions, 20, torch.Generator().manual_seed(0))
    assert points.shape == (4, 20) and points.dtype == torch.int64
    assert len(set(points[0].tolist())) == 20 and bool(large[points[0]].all())  # without replacement
    assert set(points[1].tolist()) == {3, 7} and set(points[2].tolist()) <= {3, 7}
    assert points[3].tolist() == [-1] * 20
    # Uniform over the region: each of its 50 pixels is drawn about as often.
    many = sample_regions(large[None, None].expand(2000, 1, -1), 5, torch.Generator().manual_seed(1))
    counts = torch.bincount(many.flatten(), minlength=100)[10:60].float()
    assert float(counts.min()) > 0.6 * 200 and float(counts.max()) < 1.4 * 200
    again = [sample_regions(regions, 10, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(again[0], again[1])


def test_class_balance_weights_by_the_other_class_over_a_window():
    balance = ClassBalance(window=2)
    assert balance.update(10, 30) == (0.75, 0.25)
    assert balance.update(30, 10) == (0.5, 0.5)
    assert balance.update(0, 0) == (0.25, 0.75)  # the first iteration has left the window
    assert ClassBalance(window=3).update(0, 0) == (0.5, 0.5)
    assert set(balance.state_dict()) == {"counts", "step"}  # resumable


def _targets(base_classes_top: int | None, image_classes: list[int], pad_right: bool = False) -> ImageTargets:
    """A SIZE x SIZE image: top half base class ``base_classes_top`` (if any), the rest non-base."""
    base_label = torch.full((SIZE, SIZE), NOT_BASE)
    if base_classes_top is not None:
        base_label[: SIZE // 2] = base_classes_top
    pad = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    if pad_right:
        pad[:, SIZE // 2 :] = True
        base_label[pad] = NOT_BASE
    classes = torch.tensor(image_classes)
    return ImageTargets(
        classes=classes,
        masks=torch.zeros(len(classes), SIZE, SIZE, dtype=torch.bool),
        has_mask=torch.zeros(len(classes), dtype=torch.bool),
        base_label=base_label,
        pad=pad,
        image_classes=classes.sort().values,
    )


def _pair_losses(**overrides) -> PairLosses:
    settings = LossSettings(base_points=10, base_positive_points=8, novel_points=6, **overrides)
    return PairLosses(mask_dim=FEATURES, novel_classes=NOVEL, settings=settings)


def _outputs(batch: int, queries: int = 2, num_classes: int = 4):
    mask_features = torch.randn(batch, FEATURES, SIZE // 2, SIZE // 2)
    pred_logits = torch.randn(batch, queries, num_classes + 1, requires_grad=True)
    pred_masks = torch.randn(batch, queries, SIZE // 2, SIZE // 2, requires_grad=True)
    return mask_features, pred_logits, pred_masks


def test_base_loss_counts_only_valid_pairs():
    # Both images: top half base class 0, bottom half non-base. 8 points on class 0 and 2 on the
    # non-base half per image; per order 10 x 10 pairs, of which the 2 x 2 non-base ones are invalid.
    losses = _pair_losses()
    targets = [_targets(0, [0]), _targets(0, [0])]
    result = losses(*_outputs(2), targets, torch.Generator().manual_seed(0))
    counts = losses.balance.counts[0].tolist()
    assert counts == [2 * 8 * 8, 2 * (100 - 64 - 4)]  # same, different: both orders
    assert math.isfinite(result["loss_sim"].item())


def test_base_loss_trains_only_the_similarity_net():
    losses = _pair_losses()
    mask_features, pred_logits, pred_masks = _outputs(2)
    mask_features.requires_grad_(True)
    result = losses(mask_features, pred_logits, pred_masks, [_targets(0, [0]), _targets(0, [0])],
                    torch.Generator().manual_seed(0))
    result["loss_sim"].backward()
    assert mask_features.grad is None  # detached: the segmenter is not shaped by this loss
    assert losses.simnet.head.weight.grad is not None


def test_distillation_needs_a_shared_novel_class():
    losses = _pair_losses()
    generator = torch.Generator().manual_seed(0)
    not_shared = losses(*_outputs(2), [_targets(0, [0, 2]), _targets(0, [0, 3])], generator)
    assert not_shared["loss_distill"].item() == 0.0 and not not_shared["loss_distill"].requires_grad
    shared = losses(*_outputs(2), [_targets(0, [0, 2]), _targets(1, [1, 2, 3])], generator)
    assert shared["loss_distill"].item() != 0.0
    shared["loss_distill"].backward()


def test_distillation_points_avoid_padding():
    losses = _pair_losses()
    mask_features, pred_logits, pred_masks = _outputs(2)
    pred_masks.retain_grad()
    result = losses(mask_features, pred_logits, pred_masks,
                    [_targets(0, [0, 2], pad_right=True), _targets(0, [0, 2], pad_right=True)],
                    torch.Generator().manual_seed(0))
    result["loss_distill"].backward()
    # Gradient reaches masks only at sampled points: never on the top (base) half or the padded right half.
    touched = pred_masks.grad.abs().sum(dim=(0, 1)) > 0
    assert touched.any()
    assert not touched[: SIZE // 4].any() and not touched[:, SIZE // 4 :].any()


def _constant_teacher(losses: PairLosses, same_probability: float) -> None:
    head = losses.simnet.head
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, math.log(same_probability / (1 - same_probability))]))


def _novel_outputs(first_class: int, second_class: int):
    """Query 0 is class 2, query 1 class 3; image 0 is all ``first_class``, image 1 all ``second_class``."""
    mask_features, _, _ = _outputs(2)
    pred_logits = torch.full((2, 2, 5), -10.0)
    pred_logits[:, 0, 2] = pred_logits[:, 1, 3] = 10.0
    pred_masks = torch.full((2, 2, SIZE // 2, SIZE // 2), -10.0)
    pred_masks[0, NOVEL.index(first_class)] = 10.0
    pred_masks[1, NOVEL.index(second_class)] = 10.0
    return mask_features, pred_logits, pred_masks


@pytest.mark.parametrize("mode", ["cross_image", "intra_image_released"])
def test_distillation_compares_pixels_across_images_unless_reproducing_the_release(mode):
    # The teacher says "same class" (t = 0.9) for every pair. Image 0 looks like novel class 2,
    # image 1 like class 3, so across images the student's cosine is 0 and within an image 1.
    losses = _pair_losses(distill_pairs=mode)
    _constant_teacher(losses, 0.9)
    targets = [_targets(None, [2, 3]), _targets(None, [2, 3])]
    loss = losses(*_novel_outputs(2, 3), targets, torch.Generator().manual_seed(0))["loss_distill"]
    cross_image_u, intra_image_u = 0.0, 1.0
    u = cross_image_u if mode == "cross_image" else intra_image_u
    assert loss.item() == pytest.approx(-0.4 * math.log(1 + u), abs=1e-4)


def test_distillation_is_lower_when_novel_scores_agree_with_the_teacher():
    losses = _pair_losses()
    _constant_teacher(losses, 0.9)
    targets = [_targets(None, [2, 3]), _targets(None, [2, 3])]
    agree = losses(*_novel_outputs(2, 2), targets, torch.Generator().manual_seed(0))["loss_distill"]
    disagree = losses(*_novel_outputs(2, 3), targets, torch.Generator().manual_seed(0))["loss_distill"]
    assert agree.item() == pytest.approx(-0.4 * math.log(2), abs=1e-4)
    assert agree < disagree


def test_odd_batches_are_rejected():
    with pytest.raises(ValueError, match="pairs"):
        _pair_losses()(*_outputs(3), [_targets(0, [0])] * 3, torch.Generator())


def test_balanced_accuracy_of_the_similarity_net() -> None:
    from simformer_cli.model.pair_losses import balanced_accuracy

    same = torch.tensor([True, True, False, False, False, True])
    valid = torch.tensor([True, True, True, True, True, False])
    said_same = torch.tensor([True, False, False, False, True, False])  # same: 1 of 2; different: 2 of 3
    log_probs = torch.stack([(~said_same).float(), said_same.float()], dim=1).log_softmax(-1)
    assert balanced_accuracy(log_probs, same, valid) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert balanced_accuracy(log_probs, same & False, valid) is None  # no same-class pair: undefined
