"""Point-sampled mask losses (``loss.mask_points``): sampling, uncertainty, and agreement with the
full-resolution losses they estimate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from simformer_cli.model.criterion import SetCriterion, total_loss
from simformer_cli.model.points import point_sample, shared_uncertain_points
from simformer_cli.settings.model import LossSettings
from tests.test_model_criterion import NOVEL, NUM_CLASSES, _hand_outputs, weak_targets


def test_point_sample_reads_pixel_centres_and_upsampled_values():
    maps = torch.arange(32.0).view(2, 4, 4)
    centres = torch.tensor([[[0.125, 0.125], [0.875, 0.375]]]).expand(2, -1, -1)  # (x, y) of pixels (0,0), (1,3)
    values = point_sample(maps, centres)
    assert values.tolist() == [[0.0, 7.0], [16.0, 23.0]]
    # A point reads the same value as the bilinearly upsampled map at that place.
    upsampled = F.interpolate(maps[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    row, column = 5, 9
    at = torch.tensor([[[(column + 0.5) / 16, (row + 0.5) / 16]]]).expand(2, -1, -1)
    torch.testing.assert_close(point_sample(maps, at)[:, 0], upsampled[:, row, column])


def test_uncertain_points_prefer_logits_near_zero_and_repeat_with_the_generator():
    columns = (torch.arange(16.0) + 0.5) / 16
    logits = (20 * (columns - 0.5)).expand(3, 16, 16)  # sure at the sides, unsure in the middle
    coords = shared_uncertain_points(logits, torch.arange(3), 3, 40, oversample_ratio=3.0, importance_ratio=0.75,
                                     generator=torch.Generator().manual_seed(0)).coords
    assert coords.shape == (3, 40, 2) and bool(((coords >= 0) & (coords <= 1)).all())
    distance = (coords[..., 0] - 0.5).abs()  # uniform points: 0.25 on average
    assert float(distance[:, :30].mean()) < 0.1 and float(distance[:, 30:].mean()) > 0.1
    again = shared_uncertain_points(logits, torch.arange(3), 3, 40, oversample_ratio=3.0, importance_ratio=0.75,
                                    generator=torch.Generator().manual_seed(0)).coords
    assert torch.equal(coords, again)


def test_maps_sharing_a_draw_set_share_its_points_but_keep_their_own_uncertain_ones():
    columns = (torch.arange(16.0) + 0.5) / 16
    logits = torch.stack([20 * (columns - 0.5), 20 * (columns - 0.2), 20 * (columns - 0.5)])[:, None, :].expand(3, 16, 16)
    draw_of = torch.tensor([0, 0, 1])  # maps 0 and 1 predict one target, map 2 another
    points = shared_uncertain_points(logits, draw_of, 2, 40, oversample_ratio=3.0, importance_ratio=0.75,
                                     generator=torch.Generator().manual_seed(0))
    assert points.drawn.shape == (2, 120 + 10, 2) and points.coords.shape == (3, 40, 2)
    uniform = points.coords[:, 30:]
    assert torch.equal(uniform[0], uniform[1]) and not torch.equal(uniform[0], uniform[2])
    # Each map keeps the candidates where it is itself unsure: x near 0.5 for map 0, near 0.2 for map 1.
    assert float((points.coords[0, :30, 0] - 0.5).abs().mean()) < 0.1
    assert float((points.coords[1, :30, 0] - 0.2).abs().mean()) < 0.1
    # Reading every point of each set once gives each map the values at its own points.
    maps = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(points.read(point_sample(maps, points.drawn)),
                               point_sample(maps[draw_of], points.coords))


def _criterion(**overrides) -> SetCriterion:
    settings = LossSettings(similarity=False, distillation=False, **overrides)
    return SetCriterion(num_classes=NUM_CLASSES, mask_dim=8, novel_classes=NOVEL, settings=settings)


def test_uniform_points_estimate_the_full_resolution_losses():
    # Large enough maps that dice's +1 smoothing is negligible at both resolutions.
    outputs = _hand_outputs(size=16)
    targets = [weak_targets(0, 64, [4], pad_columns=16), weak_targets(1, 64, [], pad_columns=16)]
    full = _criterion()(outputs, targets, torch.Generator())
    sampled = _criterion(mask_points=60_000, point_importance_ratio=0.0)(
        outputs, targets, torch.Generator().manual_seed(3))
    assert set(sampled) == set(full)
    for name in ("loss_focal", "loss_dice", "loss_comp"):
        assert float(sampled[name]) == pytest.approx(float(full[name]), rel=0.03), name
    torch.testing.assert_close(sampled["loss_ce"], full["loss_ce"])  # classes do not depend on points


def test_point_losses_backpropagate_and_repeat():
    outputs = _hand_outputs(queries=6, size=8)
    outputs["pred_masks"].requires_grad_(True)
    targets = [weak_targets(0, 32, [4, 5]), weak_targets(1, 32, [4])]
    criterion = _criterion(mask_points=32)
    losses = criterion(outputs, targets, torch.Generator().manual_seed(0))
    total_loss(losses).backward()
    assert outputs["pred_masks"].grad is not None and bool(outputs["pred_masks"].grad.abs().sum() > 0)
    again = criterion(outputs, targets, torch.Generator().manual_seed(0))
    assert all(torch.equal(losses[name], again[name]) for name in losses)
    other = criterion(outputs, targets, torch.Generator().manual_seed(1))
    assert not torch.equal(losses["loss_focal"], other["loss_focal"])
