"""Backbones: torchvision key layout, FrozenBN, pretrained-weight loading, output strides."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from simformer_cli.errors import UserError
from simformer_cli.model.backbone import (
    BackboneWeightsError,
    FrozenBatchNorm2d,
    ResNet,
    TinyBackbone,
    build_backbone,
    load_backbone_weights,
)

BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")


def torchvision_resnet_keys(depths: tuple[int, ...]) -> list[str]:
    """State-dict keys of torchvision's ResNet with Bottleneck blocks, without fc and step counters."""

    def bn(prefix: str) -> list[str]:
        return [f"{prefix}.{suffix}" for suffix in BN_SUFFIXES]

    keys = ["conv1.weight", *bn("bn1")]
    for layer, depth in enumerate(depths, start=1):
        for block in range(depth):
            prefix = f"layer{layer}.{block}"
            for index in (1, 2, 3):
                keys += [f"{prefix}.conv{index}.weight", *bn(f"{prefix}.bn{index}")]
            if block == 0:  # every stage's first block changes width (and stride from layer2 on)
                keys += [f"{prefix}.downsample.0.weight", *bn(f"{prefix}.downsample.1")]
    return keys


@pytest.fixture(scope="module")
def resnet50() -> ResNet:
    return build_backbone("resnet50")


def test_resnet50_keys_match_torchvision(resnet50):
    expected = torchvision_resnet_keys((3, 4, 6, 3))
    # torchvision's resnet50 state dict has 320 entries: these 265, 53 num_batches_tracked, fc.weight, fc.bias.
    assert len(expected) == 265
    assert list(resnet50.state_dict()) == expected
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer4.2.bn3.weight"):
        assert key in resnet50.state_dict()
    assert not any(key.startswith("fc.") for key in resnet50.state_dict())


def test_resnet101_key_count():
    assert list(build_backbone("resnet101").state_dict()) == torchvision_resnet_keys((3, 4, 23, 3))
    assert len(torchvision_resnet_keys((3, 4, 23, 3))) == 520


def test_resnet50_shapes_stride_placement_and_outputs(resnet50):
    state = resnet50.state_dict()
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer1.0.conv3.weight"].shape == (256, 64, 1, 1)
    assert state["layer4.2.bn3.weight"].shape == (2048,)
    # torchvision style: the stride sits in the 3x3 conv, not the first 1x1.
    assert resnet50.layer2[0].conv1.stride == (1, 1) and resnet50.layer2[0].conv2.stride == (2, 2)
    # FrozenBN holds buffers only: the trainable parameters are exactly the convolution weights.
    owners = {name.rsplit(".", 1)[0] for name, _ in resnet50.named_parameters()}
    assert all(isinstance(resnet50.get_submodule(owner), nn.Conv2d) for owner in owners)
    assert len(owners) == 53
    with torch.no_grad():
        features = resnet50(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "res2": (1, 256, 16, 16), "res3": (1, 512, 8, 8), "res4": (1, 1024, 4, 4), "res5": (1, 2048, 2, 2)
    }


def test_frozen_batch_norm_equals_batch_norm_in_eval_mode():
    generator = torch.Generator().manual_seed(0)
    frozen, reference = FrozenBatchNorm2d(6), nn.BatchNorm2d(6).eval()
    stats = {name: torch.rand(6, generator=generator) + 0.5 for name in BN_SUFFIXES}
    frozen.load_state_dict(stats)
    reference.load_state_dict(stats, strict=False)
    x = torch.randn(2, 6, 5, 5, generator=generator)
    torch.testing.assert_close(frozen(x), reference(x))


def _torchvision_style_file(backbone: nn.Module, path, nest: str | None = None) -> dict[str, torch.Tensor]:
    """Save randomised weights the way torchvision's file has them: with fc and step counters."""
    generator = torch.Generator().manual_seed(3)
    state = {k: torch.rand(v.shape, generator=generator) + 0.5 for k, v in backbone.state_dict().items()}
    on_disk = dict(state)
    on_disk.update({"fc.weight": torch.zeros(10, 4), "fc.bias": torch.zeros(10),
                    "bn1.num_batches_tracked": torch.tensor(0)})
    torch.save({nest: on_disk} if nest else on_disk, path)
    return state


def test_load_backbone_weights_round_trips_a_torchvision_layout_file(tmp_path, resnet50):
    path = tmp_path / "r50.pth"
    saved = _torchvision_style_file(resnet50, path)
    fresh = build_backbone("resnet50")
    load_backbone_weights(fresh, path)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, saved[key]), key
    # The same file also fits the from-scratch variant with live BatchNorm.
    live = build_backbone("resnet50", norm="batch_norm")
    assert [k for k in live.state_dict() if not k.endswith("num_batches_tracked")] == list(saved)
    load_backbone_weights(live, path)
    assert torch.equal(live.layer3[2].bn2.running_var, saved["layer3.2.bn2.running_var"])


@pytest.mark.parametrize("nest", ["state_dict", "model"])
def test_load_backbone_weights_accepts_nested_state_dicts(tmp_path, nest):
    path = tmp_path / "tiny.pth"
    saved = _torchvision_style_file(TinyBackbone((8, 8, 16, 16)), path, nest)
    fresh = TinyBackbone((8, 8, 16, 16))
    load_backbone_weights(fresh, path)
    assert all(torch.equal(value, saved[key]) for key, value in fresh.state_dict().items())


def _error_for(tmp_path, backbone: nn.Module, content) -> str:
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(BackboneWeightsError) as caught:
        load_backbone_weights(backbone, path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert isinstance(caught.value, UserError)  # reaches the user as one line, exit status 2
    return message


def test_load_backbone_weights_reports_bad_files(tmp_path):
    backbone = TinyBackbone((8, 8, 16, 16))
    state = dict(backbone.state_dict())
    missing = {k: v for k, v in state.items() if k != "stages.3.down.0.weight"}
    assert "missing 1 keys (stages.3.down.0.weight)" in _error_for(tmp_path, backbone, missing)
    extra = {**state, "stages.4.down.0.weight": torch.zeros(1), "stages.5.down.0.weight": torch.zeros(1)}
    assert "2 unexpected keys (stages.4.down.0.weight, stages.5" in _error_for(tmp_path, backbone, extra)
    wrong = {**state, "stem.down.0.weight": torch.zeros(8, 3, 5, 5)}
    assert "wrong shape, e.g. stem.down.0.weight (8, 3, 5, 5)" in _error_for(tmp_path, backbone, wrong)
    assert "cannot read" in _error_for(tmp_path, backbone, b"not a checkpoint")
    assert "state dict of tensors" in _error_for(tmp_path, backbone, {"weights": [1, 2]})
    with pytest.raises(BackboneWeightsError, match="not found"):
        load_backbone_weights(backbone, tmp_path / "absent.pth")


def test_tiny_backbone_has_the_resnet_interface():
    tiny = TinyBackbone((16, 32, 64, 128))
    features = tiny(torch.randn(2, 3, 128, 96))
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "res2": (2, 16, 32, 24), "res3": (2, 32, 16, 12), "res4": (2, 64, 8, 6), "res5": (2, 128, 4, 3)
    }
    assert tiny.out_channels == {"res2": 16, "res3": 32, "res4": 64, "res5": 128}
