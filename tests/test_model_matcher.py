"""Hungarian matcher on hand-made cost situations."""

from __future__ import annotations

import torch

from simformer_cli.model import matcher as matcher_module
from simformer_cli.model.losses import dice_loss, sigmoid_focal_loss
from simformer_cli.model.matcher import HungarianMatcher, pairwise_dice_cost, pairwise_focal_cost
from simformer_cli.model.targets import NOT_BASE, ImageTargets

from model_reference import cost_matrices, cost_matrix, layer_cost_matrices, match

NUM_CLASSES = 4
SURE = 10.0  # a logit that makes a class or a pixel practically certain


def make_targets(classes: list[int], masks: torch.Tensor, has_mask: list[bool]) -> ImageTargets:
    size = masks.shape[-2:]
    return ImageTargets(
        classes=torch.tensor(classes, dtype=torch.int64),
        masks=masks,
        has_mask=torch.tensor(has_mask, dtype=torch.bool),
        base_label=torch.full(size, NOT_BASE),
        pad=torch.zeros(size, dtype=torch.bool),
        image_classes=torch.tensor(sorted(set(classes)), dtype=torch.int64),
    )


def class_logits_for(classes: list[int]) -> torch.Tensor:
    """(Q, K+1) logits, query q sure of classes[q]."""
    logits = torch.zeros(len(classes), NUM_CLASSES + 1)
    logits[torch.arange(len(classes)), torch.tensor(classes)] = SURE
    return logits


def test_class_only_matching_finds_the_known_optimum():
    # Query 0 is sure of class 1, query 1 of class 0; the targets are [class 0, class 1] without masks.
    logits = class_logits_for([1, 0])[None]
    masks = torch.zeros(1, 2, 4, 4)
    target = make_targets([0, 1], torch.zeros(2, 8, 8, dtype=torch.bool), [False, False])
    (queries, indices), = match(HungarianMatcher(), logits, masks, [target])
    assert dict(zip(queries.tolist(), indices.tolist())) == {0: 1, 1: 0}


def test_mask_cost_decides_when_classes_are_uninformative():
    top = torch.zeros(8, 8, dtype=torch.bool)
    top[:4] = True
    target = make_targets([2, 2], torch.stack([top, ~top]), [True, True])
    logits = torch.zeros(1, 2, NUM_CLASSES + 1)  # both queries equally unsure
    mask_logits = torch.full((1, 2, 4, 4), -SURE)
    mask_logits[0, 0, 2:] = SURE  # query 0 draws the bottom half (target 1)
    mask_logits[0, 1, :2] = SURE  # query 1 draws the top half (target 0)
    (queries, indices), = match(HungarianMatcher(), logits, mask_logits, [target])
    assert dict(zip(queries.tolist(), indices.tolist())) == {0: 1, 1: 0}


def test_cost_matrix_matches_the_formula_per_target_kind():
    generator = torch.Generator().manual_seed(0)
    class_logits = torch.randn(3, NUM_CLASSES + 1, generator=generator)
    mask_logits = torch.randn(3, 4, 4, generator=generator)
    gt = torch.zeros(8, 8, dtype=torch.bool)
    gt[2:6, 2:6] = True
    target = make_targets([1, 3], torch.stack([gt, torch.zeros_like(gt)]), [True, False])
    cost = cost_matrix(HungarianMatcher(), class_logits, mask_logits, target)

    probs = class_logits.softmax(-1)
    small_gt = gt[::2, ::2].float().flatten()  # nearest downsampling by 2 keeps the even pixels
    flat = mask_logits.flatten(1)
    expected_mask_cost = 20 * sigmoid_focal_loss(flat, small_gt.expand_as(flat)) + dice_loss(
        flat, small_gt.expand_as(flat)
    )
    torch.testing.assert_close(cost[:, 0], -probs[:, 1] + expected_mask_cost)
    torch.testing.assert_close(cost[:, 1], -probs[:, 3])  # no mask: class probability only


def test_pairwise_costs_equal_the_per_pair_losses():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 30, generator=generator)
    gt = (torch.rand(3, 30, generator=generator) > 0.5).float()
    focal = pairwise_focal_cost(logits, gt, 0.25, 2.0)
    dice = pairwise_dice_cost(logits, gt)
    for q in range(5):
        for t in range(3):
            torch.testing.assert_close(focal[q, t], sigmoid_focal_loss(logits[q : q + 1], gt[t : t + 1])[0])
            torch.testing.assert_close(dice[q, t], dice_loss(logits[q : q + 1], gt[t : t + 1])[0])


def test_has_mask_flag_is_respected_when_a_base_mask_vanishes_under_downsampling():
    # Target 0 is a one-pixel base region at (1, 1): nearest downsampling 8x8 -> 4x4 keeps only
    # even pixels, so at prediction resolution its mask is empty. It still has a mask.
    speck = torch.zeros(8, 8, dtype=torch.bool)
    speck[1, 1] = True
    target = make_targets([0, 2], torch.stack([speck, torch.zeros_like(speck)]), [True, False])
    class_logits = torch.zeros(1, NUM_CLASSES + 1)
    mask_logits = torch.full((1, 4, 4), SURE)  # a query covering everything
    cost = cost_matrix(HungarianMatcher(), class_logits, mask_logits, target)
    uniform = 1 / (NUM_CLASSES + 1)
    assert cost[0, 0] > -uniform + 1.0  # mask cost counted: dice alone is ~1 for an empty GT
    torch.testing.assert_close(cost[0, 1], torch.tensor(-uniform))


def test_indices_refer_to_the_original_target_order():
    # Targets in the order [novel (no mask), tiny base whose mask vanishes, large base]. The
    # released code built the cost matrix as [has-mask | no-mask] with has-mask decided after
    # downsampling and then read its columns as target indices: every index here would shift.
    speck = torch.zeros(8, 8, dtype=torch.bool)
    speck[1, 1] = True
    left = torch.zeros(8, 8, dtype=torch.bool)
    left[:, :4] = True
    target = make_targets(
        [3, 0, 1], torch.stack([torch.zeros_like(speck), speck, left]), [False, True, True]
    )
    logits = class_logits_for([1, 3, 0])[None]  # query 0 -> class 1, query 1 -> class 3, query 2 -> class 0
    mask_logits = torch.full((1, 3, 4, 4), -SURE)
    mask_logits[0, 0, :, :2] = SURE
    (queries, indices), = match(HungarianMatcher(), logits, mask_logits, [target])
    matched = dict(zip(queries.tolist(), indices.tolist()))
    assert matched == {0: 2, 1: 0, 2: 1}
    assert [target.classes[matched[q]].item() for q in range(3)] == [1, 3, 0]


def test_each_target_gets_at_most_one_query_and_batches_are_independent():
    first = make_targets([0, 1, 2], torch.zeros(3, 8, 8, dtype=torch.bool), [False] * 3)
    second = make_targets([3], torch.zeros(1, 8, 8, dtype=torch.bool), [False])
    logits = torch.stack([class_logits_for([2, 0]), class_logits_for([3, 3])])
    matches = match(HungarianMatcher(), logits, torch.zeros(2, 2, 4, 4), [first, second])
    queries, indices = matches[0]
    assert len(queries) == 2 and sorted(indices.tolist()) == [0, 2]  # Q=2 < T=3: best two matched
    assert matches[1][1].tolist() == [0] and len(matches[1][0]) == 1


def test_batch_wide_costs_equal_each_image_alone():
    # Images with masked, maskless and no targets at all: the batch-wide products must be cut at
    # the right columns for every image.
    generator = torch.Generator().manual_seed(1)
    half = torch.zeros(8, 8, dtype=torch.bool)
    half[:, :4] = True
    targets = [
        make_targets([0, 3, 1], torch.stack([half, torch.zeros_like(half), ~half]), [True, False, True]),
        make_targets([2], torch.zeros(1, 8, 8, dtype=torch.bool), [False]),
        make_targets([], torch.zeros(0, 8, 8, dtype=torch.bool), []),
        make_targets([1], half[None], [True]),
    ]
    class_logits = torch.randn(4, 5, NUM_CLASSES + 1, generator=generator)
    mask_logits = torch.randn(4, 5, 4, 4, generator=generator)
    matcher = HungarianMatcher()
    batch = cost_matrices(matcher, class_logits, mask_logits, targets)
    for image, target in enumerate(targets):
        alone = cost_matrix(matcher, class_logits[image], mask_logits[image], target)
        assert batch[image].shape == (5, len(target.classes))
        torch.testing.assert_close(batch[image], alone)
    assert [len(q) for q, _ in match(matcher, class_logits, mask_logits, targets)] == [3, 1, 0, 1]
    # Several decoder layers at once: each layer's costs and matches are that layer's alone.
    layer_logits = torch.randn(3, 4, 5, NUM_CLASSES + 1, generator=generator)
    layer_masks = torch.randn(3, 4, 5, 4, 4, generator=generator)
    costs = layer_cost_matrices(matcher, layer_logits, layer_masks, targets)
    matches = matcher.match_layers(layer_logits, layer_masks, targets)
    matcher_module.COST_CHUNK, chunk = 1, matcher_module.COST_CHUNK  # one layer per chunk, as for the paper's sizes
    try:
        chunked = layer_cost_matrices(matcher, layer_logits, layer_masks, targets)
    finally:
        matcher_module.COST_CHUNK = chunk
    for layer in range(3):
        for got, alone, in_chunks in zip(costs[layer], cost_matrices(matcher, layer_logits[layer], layer_masks[layer],
                                                                              targets), chunked[layer]):
            torch.testing.assert_close(got, alone)
            torch.testing.assert_close(in_chunks, alone)
        for (queries, indices), (want_q, want_i) in zip(matches[layer], match(matcher, layer_logits[layer],
                                                                                 layer_masks[layer], targets)):
            assert torch.equal(queries, want_q) and torch.equal(indices, want_i)


def test_nearest_downsample_picks_the_pixels_interpolate_picks():
    import torch.nn.functional as F

    from simformer_cli.model.targets import nearest_downsample

    generator = torch.Generator().manual_seed(0)
    for height, width, h, w in [(128, 128, 32, 32), (64, 96, 16, 24), (130, 70, 32, 17), (37, 41, 9, 10)]:
        labels = torch.randint(-1, 300, (3, height, width), generator=generator)
        for maps in (labels, labels > 100):  # label ids and bool masks keep their dtype
            expected = F.interpolate(maps[:, None].float(), size=(h, w), mode="nearest")[:, 0].to(maps.dtype)
            assert torch.equal(nearest_downsample(maps, (h, w)), expected)
