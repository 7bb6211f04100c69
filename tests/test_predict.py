"""Test-time prediction: images batched by size give the scores they get one at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simformer_cli.inference import predict
from simformer_cli.model.maskformer import build_model
from simformer_cli.settings.model import tiny_model_settings
from simformer_cli.settings.test_time import TestTimeSettings


@pytest.mark.parametrize(("scales", "flip"), [((1.0,), False), ((0.75, 1.0), True)])
def test_batched_scores_equal_one_image_at_a_time(scales, flip, monkeypatch) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = build_model(tiny_model_settings(5)).eval()
    settings = TestTimeSettings(short_side=64, max_long_side=96, scales=scales, flip=flip)
    rng = np.random.default_rng(0)
    # Two sizes interleaved, five of one size: a batch of three, a batch of two (batch_images=3).
    sizes = [(48, 64), (40, 40), (48, 64), (48, 64), (40, 40), (48, 64), (48, 64)]
    images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for size in sizes]
    passes = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda batch: passes.append(len(batch)) or forward(batch))
    batched = predict.predict_scores(model, images, settings, torch.device("cpu"), batch_images=3)
    mirrors = 2 if flip else 1  # a mirrored copy of each image rides in the same pass
    assert sorted(passes) == sorted([3 * mirrors, 2 * mirrors, 2 * mirrors] * len(scales))
    for image, scores in zip(images, batched):
        alone = predict.predict_scores(model, [image], settings, torch.device("cpu"))[0]
        assert scores.shape == (5, *image.shape[:2])
        torch.testing.assert_close(scores, alone, atol=1e-5, rtol=1e-4)


def test_large_images_are_batched_by_pixels(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(predict, "BATCH_PIXELS", 2 * 48 * 64)
    model = build_model(tiny_model_settings(3)).eval()
    passes = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda batch: passes.append(len(batch)) or forward(batch))
    images = [np.zeros((48, 64, 3), dtype=np.uint8)] * 5
    predict.predict_scores(model, images, TestTimeSettings(short_side=48, max_long_side=64), torch.device("cpu"))
    assert passes == [2, 2, 1]
