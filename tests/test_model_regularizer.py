"""The DFR regularized loss: its kernels on hand-built images, its value on hand-built predictions,
where its gradients go, and its place in the criterion."""

from __future__ import annotations

import pytest
import torch

from simformer_cli.model.criterion import build_criterion
from simformer_cli.model.maskformer import build_model, normalize_images
from simformer_cli.model.regularizer import (
    affinity_vectors, class_distribution, covered_region, dfr_loss, gaussian_kernel, pair_disagreement,
)
from simformer_cli.model.targets import targets_from_label_map
from simformer_cli.settings.model import LossSettings, tiny_model_settings

IGNORE = 255
RED, BLUE = (200.0, 30.0, 30.0), (30.0, 30.0, 200.0)


def two_colour_image(size: int = 32) -> torch.Tensor:
    """(1, 3, size, size): the left half red, the right half blue."""
    image = torch.empty(1, 3, size, size)
    image[0, :, :, : size // 2] = torch.tensor(RED)[:, None, None]
    image[0, :, :, size // 2 :] = torch.tensor(BLUE)[:, None, None]
    return image


def unlabelled_targets(size: int, batch: int = 1):
    """Targets of crops with no labelled pixel (every pixel is novel or ignore) and no padding."""
    label = torch.full((size, size), IGNORE)
    pad = torch.zeros(size, size, dtype=torch.bool)
    return [targets_from_label_map(label, pad, base_classes=[0, 1], maskless_classes=[2], ignore_index=IGNORE)
            for _ in range(batch)]


def one_hot_outputs(classes_of_columns: torch.Tensor, num_classes: int = 3, sharp: float = 30.0):
    """Outputs of a network with one query per class, each sure of its class, whose masks put each
    grid column on the class ``classes_of_columns[x]``: pred_logits (1, K, K+1), pred_masks (1, K, h, w)."""
    width = len(classes_of_columns)
    logits = torch.full((1, num_classes, num_classes + 1), -sharp)
    logits[0, torch.arange(num_classes), torch.arange(num_classes)] = sharp
    on = torch.nn.functional.one_hot(classes_of_columns, num_classes).T.float()  # (K, w)
    masks = (on * 2 - 1)[None, :, None, :].expand(1, num_classes, width, width) * sharp
    return logits, masks.contiguous()


def test_bilateral_kernel_attracts_pixels_of_one_colour_and_place_only():
    colours = torch.tensor([[RED, RED, BLUE, RED]])
    positions = torch.tensor([[[0.0, 0.0], [0.0, 4.0], [0.0, 4.0], [0.0, 400.0]]])  # the last one far away
    kernel = gaussian_kernel(affinity_vectors(colours, positions, None, sigma_rgb=15.0, sigma_xy=40.0,
                                              sigma_feature=1.0))[0]
    assert kernel[0, 1] > 0.99  # same colour, 4 pixels apart
    assert kernel[0, 2] < 1e-6 and kernel[1, 2] < 1e-6  # another colour, same place
    assert kernel[0, 3] < 1e-6  # same colour, far apart
    assert torch.allclose(kernel, kernel.T) and torch.allclose(kernel.diagonal(), torch.ones(4))


def test_feature_kernel_attracts_pixels_with_aligned_features():
    features = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    same_place = torch.zeros(1, 4, 2)
    same_colour = torch.zeros(1, 4, 3)
    kernel = gaussian_kernel(affinity_vectors(same_colour, same_place, features, sigma_rgb=15.0, sigma_xy=40.0,
                                              sigma_feature=0.5))[0]
    assert kernel[0, 1] == pytest.approx(1.0)  # same direction, any length
    assert kernel[0, 2] == pytest.approx(float(torch.exp(torch.tensor(-4.0))), rel=1e-5)  # orthogonal: |df|^2 = 2
    assert kernel[0, 3] < kernel[0, 2]  # opposite: |df|^2 = 4


def test_pair_disagreement_counts_only_valid_pairs_of_differing_predictions():
    probs = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    kernel = torch.ones(1, 3, 3)
    valid = ~torch.eye(3, dtype=torch.bool)[None]
    # Pairs (0,2), (2,0), (1,2), (2,1) disagree completely: 4 of the 6 valid pairs.
    assert pair_disagreement(probs, kernel, valid).item() == pytest.approx(4 / 6)
    kernel[0, 0, 2] = kernel[0, 2, 0] = kernel[0, 1, 2] = kernel[0, 2, 1] = 0.0
    assert pair_disagreement(probs, kernel, valid).item() == pytest.approx(0.0)


def test_class_distribution_rows_sum_to_one():
    logits, masks = torch.randn(2, 5, 4), torch.randn(2, 5, 7)
    probs = class_distribution(logits, masks)
    assert probs.shape == (2, 7, 3)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 7), atol=1e-5)


def _loss(classes_of_columns, deep_kernel="none", **overrides):
    size, grid = 32, len(classes_of_columns)
    logits, masks = one_hot_outputs(torch.tensor(classes_of_columns))
    settings = LossSettings(regularizer="dfr", dfr_deep_kernel=deep_kernel, dfr_points=64, **overrides)
    return dfr_loss(images=two_colour_image(size), pred_logits=logits, pred_masks=masks,
                    mask_features=torch.randn(1, 8, grid, grid, generator=torch.Generator().manual_seed(1)),
                    targets=unlabelled_targets(size), settings=settings, generator=torch.Generator().manual_seed(0))


def test_loss_is_near_zero_when_the_prediction_follows_the_colour_regions():
    # An 8x8 grid (stride 4) over the two-colour image: columns 0-3 red, 4-7 blue.
    follows = _loss([0, 0, 0, 0, 1, 1, 1, 1])
    splits_the_red_region = _loss([0, 0, 2, 2, 1, 1, 1, 1])
    assert follows.item() < 1e-4
    assert splits_the_red_region.item() > 0.05
    # The same figures with the feature kernel (random features only lower the affinities).
    assert _loss([0, 0, 0, 0, 1, 1, 1, 1], "features").item() < 1e-4
    assert _loss([0, 0, 2, 2, 1, 1, 1, 1], "features").item() > 0


def test_gradients_reach_the_predictions_and_never_the_features():
    size = 32
    logits = torch.randn(2, 4, 4, requires_grad=True)
    masks = torch.randn(2, 4, 8, 8, requires_grad=True)
    features = torch.randn(2, 8, 8, 8, requires_grad=True)
    images = torch.rand(2, 3, size, size, requires_grad=True) * 255
    loss = dfr_loss(images=images, pred_logits=logits, pred_masks=masks, mask_features=features,
                    targets=unlabelled_targets(size, batch=2), settings=LossSettings(regularizer="dfr", dfr_points=32),
                    generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert masks.grad is not None and masks.grad.abs().sum() > 0
    assert features.grad is None


def test_unlabelled_region_excludes_labelled_and_padding_pixels():
    label = torch.full((8, 8), IGNORE)
    label[:4] = 0  # top half labelled base class 0
    pad = torch.zeros(8, 8, dtype=torch.bool)
    pad[:, 6:] = True
    label[pad] = IGNORE
    targets = [targets_from_label_map(label, pad, base_classes=[0, 1], maskless_classes=[2], ignore_index=IGNORE)]
    unlabelled = covered_region(targets, (4, 4), "unlabelled").view(4, 4)
    every = covered_region(targets, (4, 4), "all").view(4, 4)
    assert every.tolist() == [[True, True, True, False]] * 4
    assert unlabelled.tolist() == [[False] * 4] * 2 + [[True, True, True, False]] * 2


def test_an_image_without_unlabelled_pixels_adds_nothing():
    size = 32
    label = torch.zeros(size, size, dtype=torch.long)  # every pixel labelled
    pad = torch.zeros(size, size, dtype=torch.bool)
    targets = [targets_from_label_map(label, pad, base_classes=[0, 1], maskless_classes=[], ignore_index=IGNORE)]
    logits = torch.randn(1, 4, 4, requires_grad=True)
    loss = dfr_loss(images=two_colour_image(size), pred_logits=logits, pred_masks=torch.randn(1, 4, 8, 8),
                    mask_features=torch.randn(1, 8, 8, 8), targets=targets, settings=LossSettings(regularizer="dfr"),
                    generator=torch.Generator())
    assert loss.item() == 0.0
    loss.backward()  # still in the graph
    assert logits.grad is not None


@pytest.mark.parametrize("deep_kernel", ["features", "similarity"])
def test_criterion_adds_the_weighted_term_for_the_last_layer(deep_kernel):
    torch.manual_seed(0)
    model_settings = tiny_model_settings(3)
    model = build_model(model_settings)
    images = torch.rand(2, 3, 64, 64) * 255
    targets = []
    for index in range(2):
        label = torch.full((64, 64), IGNORE)
        label[:32] = index % 2
        targets.append(targets_from_label_map(label, torch.zeros(64, 64, dtype=torch.bool), base_classes=[0, 1],
                                              maskless_classes=[2], ignore_index=IGNORE))
    outputs = model(normalize_images(images))

    criteria = []

    def losses_with(**settings):
        torch.manual_seed(1)  # the same similarity net every time
        criteria.append(build_criterion(model_settings, LossSettings(**settings), novel_classes=[2]))
        return criteria[-1](outputs, targets, torch.Generator().manual_seed(0), images=images)

    plain = losses_with()
    weighted = losses_with(regularizer="dfr", dfr_weight=3.0, dfr_points=16, dfr_deep_kernel=deep_kernel)
    once = losses_with(regularizer="dfr", dfr_weight=1.0, dfr_points=16, dfr_deep_kernel=deep_kernel)
    assert "loss_dfr" not in plain and not any(name.startswith("loss_dfr_aux") for name in weighted)
    assert weighted["loss_dfr"].item() == pytest.approx(3.0 * once["loss_dfr"].item(), rel=1e-4)
    assert weighted["loss_dfr"].item() > 0
    # The other terms do not move: the regularizer draws its points after them.
    for name, value in plain.items():
        assert torch.equal(value, weighted[name]), name
    # The term trains the segmenter's class and mask heads, never the similarity net it may read.
    weighted["loss_dfr"].backward()
    assert all(parameter.grad is None for parameter in criteria[1].pair_losses.parameters())
    assert model.predictor.class_embed.weight.grad.abs().sum() > 0


def test_settings_refuse_the_similarity_kernel_without_the_similarity_net():
    with pytest.raises(ValueError, match="the similarity net is the kernel"):
        LossSettings(regularizer="dfr", dfr_deep_kernel="similarity", similarity=False, distillation=False)


def test_runs_without_the_regularizer_record_what_they_recorded_before_it_existed() -> None:
    """Manifests, digests and resume keys of existing runs must not change: the regularizer's
    settings (and eval's boundary band) appear in the JSON only when they are used."""
    from simformer_cli.artifacts.metrics import EvalParams
    from simformer_cli.settings.model import LossSettings

    off = LossSettings().model_dump(mode="json")
    assert "regularizer" not in off and not [key for key in off if key.startswith("dfr_")]
    assert LossSettings.model_validate(off) == LossSettings()
    on = LossSettings(regularizer="dfr", dfr_weight=3.0).model_dump(mode="json")
    assert on["regularizer"] == "dfr" and on["dfr_weight"] == 3.0
    assert LossSettings.model_validate(on).dfr_weight == 3.0
    assert EvalParams(subset="val").model_dump(mode="json") == {"subset": "val"}
    assert EvalParams(subset="val", boundary_band=3).model_dump(mode="json") == {"subset": "val", "boundary_band": 3}
