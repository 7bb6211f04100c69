"""The pure loss functions against hand-computed and numpy values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from simformer_cli.model.losses import (
    balanced_binary_cross_entropy,
    dice_loss,
    distillation_loss,
    novel_mil_terms,
    overlap_terms,
    presence_terms,
    sigmoid_focal_loss,
)

from model_reference import complementary_loss

FLOOR = -2.9444
BIG = 20.0


def test_focal_loss_at_zero_logits():
    # p = 0.5 everywhere: positives cost 0.25 * 0.5^2 * ln 2, negatives 0.75 * 0.5^2 * ln 2.
    loss = sigmoid_focal_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))
    expected = (0.25 * 0.25 * math.log(2) + 0.75 * 0.25 * math.log(2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_focal_loss_vanishes_when_confidently_right_and_grows_when_wrong():
    targets = torch.tensor([[1.0, 0.0, 1.0]])
    right = sigmoid_focal_loss(torch.tensor([[BIG, -BIG, BIG]]), targets)
    wrong = sigmoid_focal_loss(torch.tensor([[-BIG, BIG, -BIG]]), targets)
    assert right.item() < 1e-8
    # Confidently wrong: (1 - p_t)^gamma = 1, BCE = 20, alpha_t = 0.25, 0.75, 0.25.
    assert wrong.item() == pytest.approx((0.25 + 0.75 + 0.25) * BIG / 3, rel=1e-4)


def test_dice_loss_known_values():
    targets = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    everywhere = dice_loss(torch.full((1, 8), 100.0), targets)
    # numerator 2*4 + 1 = 9, denominator 8 + 4 + 1 = 13
    assert everywhere.item() == pytest.approx(1 - 9 / 13, rel=1e-6)
    exact = dice_loss(torch.tensor([[100.0] * 4 + [-100.0] * 4]), targets)
    assert exact.item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(torch.full((2, 8), 0.0), targets.expand(2, 8)).shape == (2,)


def _non_base_left_half(size: int = 8) -> torch.Tensor:
    region = torch.zeros(size, size, dtype=torch.bool)
    region[:, : size // 2] = True
    return region


def _comp(logits: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    return complementary_loss(logits, region, floor_logit=FLOOR, focal_weight=20.0, dice_weight=1.0)


def test_complementary_loss_is_near_its_floor_when_novel_masks_cover_the_non_base_region():
    region = _non_base_left_half()
    # Two novel queries that together cover exactly the non-base region, each part of it.
    logits = torch.full((2, 8, 8), -BIG)
    logits[0, :4, :4] = BIG
    logits[1, 4:, :4] = BIG
    exact = _comp(logits, region)
    # On base pixels the union sits at the floor p = 0.05: focal 0.75 * 0.05^2 * -ln(0.95) on
    # half the pixels; dice 1 - (2*32 + 1) / (32 + 0.05*32 + 32 + 1).
    p = 1 / (1 + math.exp(-FLOOR))
    floor_value = 20 * 0.75 * p**2 * -math.log(1 - p) / 2 + 1 - 65 / (65 + p * 32)
    assert exact.item() == pytest.approx(floor_value, rel=1e-3)
    misses_half = logits.clone()
    misses_half[1] = -BIG  # the lower half of the non-base region is left uncovered
    half = _comp(misses_half, region)
    nothing = _comp(torch.empty(0, 8, 8), region)  # no novel-matched query: the union is the floor
    inverted = _comp(BIG * (1 - 2 * region.float())[None], region)  # covers the base region instead
    assert exact < 0.05 < half < nothing < inverted


def test_complementary_loss_sends_no_gradient_to_novel_masks_below_the_floor():
    region = _non_base_left_half()
    logits = torch.full((1, 8, 8), -BIG)
    logits[0, :, :4] = BIG
    logits.requires_grad_(True)
    _comp(logits, region).backward()
    assert torch.all(logits.grad[0, :, 4:] == 0)  # base pixels: the floor takes the gradient


def test_distillation_cce_and_ce_against_numpy():
    generator = torch.Generator().manual_seed(0)
    teacher = torch.rand(50, generator=generator)
    student = torch.rand(50, generator=generator)
    t, u = teacher.double().numpy(), student.double().numpy()
    cce = -np.maximum(t - 0.5, 0) * np.log(1 + u) - np.maximum(0.5 - t, 0) * np.log(2 - u)
    assert distillation_loss(teacher, student, "cce").item() == pytest.approx(cce.mean(), rel=1e-5)
    tc, uc = np.clip(t, 0.01, 0.99), np.clip(u, 0.01, 0.99)
    ce = -tc * np.log(uc) - (1 - tc) * np.log(1 - uc)
    assert distillation_loss(teacher, student, "ce").item() == pytest.approx(ce.mean(), rel=1e-5)
    # The clamp matters at the ends: u = 0 costs log(1/0.01), not infinity.
    assert distillation_loss(torch.ones(1), torch.zeros(1), "ce").item() == pytest.approx(
        -0.99 * math.log(0.01) - 0.01 * math.log(0.99), rel=1e-5
    )


@pytest.mark.parametrize("kind", ["cce", "ce"])
def test_distillation_is_lower_when_the_student_follows_the_teacher(kind):
    generator = torch.Generator().manual_seed(1)
    teacher = torch.rand(200, generator=generator)
    follows = distillation_loss(teacher, teacher, kind)
    opposes = distillation_loss(teacher, 1 - teacher, kind)
    assert follows < opposes


def test_cce_asks_nothing_of_an_unsure_teacher():
    student = torch.rand(10, requires_grad=True)
    distillation_loss(torch.full((10,), 0.5), student, "cce").backward()
    assert torch.all(student.grad == 0)


def test_balanced_bce_weights_classes_and_ignores_invalid_pairs():
    probs = torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5], [0.9, 0.1]])
    same = torch.tensor([True, False, True, False])
    valid = torch.tensor([True, True, False, True])
    loss = balanced_binary_cross_entropy(probs.log(), same, valid, positive_weight=0.7, negative_weight=0.3)
    expected = (0.7 * -math.log(0.8) + 0.3 * -math.log(0.6) + 0.3 * -math.log(0.9)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    none_valid = balanced_binary_cross_entropy(probs.log(), same, torch.zeros(4, dtype=torch.bool), 0.5, 0.5)
    assert none_valid.item() == 0.0


# ---------------------------------------------------------------- novel partition


def test_overlap_is_zero_for_masks_that_split_the_region_and_counts_what_they_share():
    region = torch.tensor([[True, True, True, False]])
    split = torch.tensor([[[1.0, 0.0, 0.5, 0.9], [0.0, 1.0, 0.0, 0.9]]])  # the 4th pixel is outside
    assert overlap_terms(split, region).item() == 0.0
    shared = torch.tensor([[[1.0, 1.0, 1.0, 0.0], [0.8, 0.2, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]]])  # 3rd row: padding
    assert overlap_terms(shared, region).item() == pytest.approx((0.8 + 0.2 + 0.5) / 3)


def test_overlap_pushes_down_every_mask_but_the_strongest_of_each_pixel():
    probs = torch.tensor([[[0.9, 0.1], [0.3, 0.6]]], requires_grad=True)
    overlap_terms(probs, torch.ones(1, 2, dtype=torch.bool)).backward()
    assert probs.grad.tolist() == [[[0.0, 0.5], [0.5, 0.0]]]


def test_presence_is_low_for_a_mask_that_claims_part_of_its_region_and_high_for_an_empty_one():
    region = torch.zeros(3, 100, dtype=torch.bool)
    region[:, :50] = True
    probs = torch.full((3, 100), 0.01)
    probs[0, :5] = 0.99  # claims 5 pixels of the region: its top 10% (5 pixels) are sure
    probs[1, 60:] = 0.99  # claims pixels outside its region only
    terms = presence_terms(probs, region, share=0.1)
    assert terms[0].item() == pytest.approx(-math.log(0.99), rel=1e-4)
    assert terms[1].item() == pytest.approx(-math.log(0.01), rel=1e-4)
    assert terms[2].item() == pytest.approx(-math.log(0.01), rel=1e-4)
    empty = presence_terms(probs[:1], torch.zeros(1, 100, dtype=torch.bool), share=0.1)
    assert empty.item() == 0.0


def test_novel_mil_rewards_present_classes_peaking_and_absent_ones_vanishing_in_the_region():
    region = torch.tensor([[True, True, True, True, False]])
    present, absent = torch.tensor([[True, False]]), torch.tensor([[False, True]])
    right = torch.tensor([[[0.9, 0.9, 0.1, 0.1, 0.0], [0.0, 0.0, 0.0, 0.0, 0.9]]])  # absent class only outside
    wrong = torch.tensor([[[0.1, 0.1, 0.1, 0.1, 0.9], [0.9, 0.9, 0.9, 0.9, 0.0]]])
    good = novel_mil_terms(right, region, present, absent, share=0.5)
    assert good.item() == pytest.approx(-math.log(0.9) - math.log(1 - 1e-6), abs=1e-4)
    bad = novel_mil_terms(wrong, region, present, absent, share=0.5)
    assert bad.item() == pytest.approx(-math.log(0.1) - math.log(0.1), rel=1e-4)
    # Nothing present or absent, or no region: nothing to learn, but still a graph.
    scores = torch.full_like(right, 0.2).requires_grad_(True)
    assert novel_mil_terms(scores, torch.zeros_like(region), present, absent, share=0.5).item() == 0.0
    novel_mil_terms(scores, region, present, absent, share=0.5).backward()
    assert scores.grad[0, 1, :4].gt(0).all() and scores.grad[0, 1, 4] == 0  # absent: pushed down inside only
