"""Settings, presets, the assembled MaskFormer and its semantic read-out."""

from __future__ import annotations

import pydantic
import pytest
import torch

from simformer_cli.model.maskformer import PIXEL_MEAN, build_model, normalize_images, semantic_scores
from simformer_cli.settings.model import LossSettings, ModelSettings, paper_model_settings, tiny_model_settings
from simformer_cli.model.transformer_decoder import sine_position_encoding

NUM_CLASSES = 6


def test_tiny_model_output_shapes():
    settings = tiny_model_settings(NUM_CLASSES)
    model = build_model(settings)
    outputs = model(torch.randn(2, 3, 64, 96))
    assert outputs["pred_logits"].shape == (2, settings.num_queries, NUM_CLASSES + 1)
    assert outputs["pred_masks"].shape == (2, settings.num_queries, 16, 24)
    assert outputs["mask_features"].shape == (2, settings.mask_dim, 16, 24)
    assert len(outputs["aux_outputs"]) == settings.dec_layers - 1
    for aux in outputs["aux_outputs"]:
        assert aux["pred_logits"].shape == outputs["pred_logits"].shape
        assert aux["pred_masks"].shape == outputs["pred_masks"].shape


def test_paper_model_has_the_published_shape():
    settings = paper_model_settings(150)
    assert (settings.backbone, settings.hidden_dim, settings.num_queries, settings.dec_layers) == (
        "resnet50", 256, 100, 6
    )
    assert (settings.nheads, settings.dim_feedforward, settings.dropout, settings.mask_dim) == (8, 2048, 0.1, 256)
    model = build_model(settings).eval()
    predictor = model.predictor
    assert predictor.input_proj.in_channels == 2048 and predictor.class_embed.out_features == 151
    assert len(predictor.mask_embed.layers) == 3 and predictor.query_embed.num_embeddings == 100
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64))
    assert outputs["pred_masks"].shape == (1, 100, 16, 16)
    assert len(outputs["aux_outputs"]) == 5


def test_last_layer_is_the_deepest_and_aux_layers_differ():
    model = build_model(tiny_model_settings(NUM_CLASSES)).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64))
    assert not torch.allclose(outputs["aux_outputs"][0]["pred_logits"], outputs["pred_logits"])


def test_semantic_scores_formula():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, NUM_CLASSES + 1, generator=generator)
    masks = torch.randn(2, 3, 4, 5, generator=generator)
    scores = semantic_scores(logits, masks)
    assert scores.shape == (2, NUM_CLASSES, 4, 5)
    b, c, y, x = 1, 2, 3, 4
    expected = sum(logits[b, q].softmax(-1)[c] * masks[b, q, y, x].sigmoid() for q in range(3))
    torch.testing.assert_close(scores[b, c, y, x], expected)
    # A query sure of "no object" contributes nothing, however confident its mask.
    no_object = torch.full((1, 1, NUM_CLASSES + 1), -30.0)
    no_object[..., -1] = 30.0
    assert semantic_scores(no_object, torch.full((1, 1, 2, 2), 30.0)).max() < 1e-6


def test_normalize_images_uses_imagenet_statistics():
    mean_image = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1).expand(2, 3, 4, 4).round().to(torch.uint8)
    normalised = normalize_images(mean_image)
    assert normalised.dtype == torch.float32
    assert normalised.abs().max() < 0.01
    assert normalize_images(torch.full((1, 3, 1, 1), 255.0))[0, 0, 0, 0].item() == pytest.approx(
        (255 - 123.675) / 58.395
    )


def test_sine_position_encoding_is_bounded_and_distinguishes_positions():
    encoding = sine_position_encoding(4, 6, 16, torch.device("cpu"))
    assert encoding.shape == (24, 16) and encoding.abs().max() <= 1
    assert torch.unique(encoding, dim=0).shape[0] == 24


def test_settings_reject_bad_values():
    with pytest.raises(pydantic.ValidationError, match="extra"):
        ModelSettings(num_classes=3, hidden=64)
    with pytest.raises(pydantic.ValidationError, match="nheads"):
        ModelSettings(num_classes=3, hidden_dim=64, nheads=5)
    with pytest.raises(pydantic.ValidationError, match="distillation needs similarity"):
        LossSettings(similarity=False)
    with pytest.raises(pydantic.ValidationError, match="base_positive_points"):
        LossSettings(base_points=10, base_positive_points=10)
    settings = LossSettings()
    with pytest.raises(pydantic.ValidationError):
        settings.sim_weight = 2.0  # frozen
    assert LossSettings.model_validate_json(settings.model_dump_json()) == settings


def test_loss_defaults_follow_the_official_ade20k_configuration():
    settings = LossSettings()
    assert (settings.class_weight, settings.mask_focal_weight, settings.dice_weight) == (1.0, 20.0, 1.0)
    assert (settings.no_object_weight, settings.complementary_weight, settings.complementary_floor_logit) == (
        0.1, 0.2, -2.9444
    )
    assert (settings.sim_weight, settings.distill_weight, settings.distill_loss) == (1.0, 0.5, "cce")
    assert (settings.base_points, settings.base_positive_points, settings.novel_points) == (100, 80, 100)
    assert settings.distill_pairs == "cross_image" and settings.balance_window == 25
