"""Backbones returning four feature levels res2..res5 (strides 4, 8, 16, 32).

``ResNet`` mirrors torchvision's parameter names exactly (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0``, ...) and puts the stride in the 3x3 conv, so an ImageNet state dict
saved by torchvision loads with :func:`load_backbone_weights`. ``TinyBackbone`` has the same output
interface and exists for CPU tests and quick synthetic runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from simformer_cli.errors import UserError

LEVELS = ("res2", "res3", "res4", "res5")
RESNET_DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


class BackboneWeightsError(UserError):
    """A pretrained-weights file that does not fit the backbone."""


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (detectron2's default for ResNets).

    Everything is a buffer under BatchNorm2d's names, so a torchvision state dict loads unchanged
    and the optimiser never sees these values. Small batches of large crops would make live batch
    statistics noisy; ImageNet statistics are better.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None].to(x.dtype) + shift[None, :, None, None].to(x.dtype)


NormName = Literal["frozen_bn", "batch_norm"]


def _norm(kind: NormName, channels: int) -> nn.Module:
    return FrozenBatchNorm2d(channels) if kind == "frozen_bn" else nn.BatchNorm2d(channels)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (expansion 4, stride in the 3x3 conv)."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, norm: NormName) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = _norm(norm, width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _norm(norm, width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = _norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                _norm(norm, out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet-50/101 trunk without the classifier; forward returns {res2..res5}.

    Input (B, 3, H, W) normalised RGB; res2 (B, 256, H/4, W/4) ... res5 (B, 2048, H/32, W/32).
    """

    def __init__(self, depths: tuple[int, int, int, int], norm: NormName = "frozen_bn") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = _norm(norm, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for index, (depth, width) in enumerate(zip(depths, (64, 128, 256, 512)), start=1):
            blocks = []
            for block_index in range(depth):
                stride = 2 if (index > 1 and block_index == 0) else 1
                blocks.append(Bottleneck(in_channels, width, stride, norm))
                in_channels = width * Bottleneck.expansion
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
        self.out_channels = {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        features = {}
        for index, level in enumerate(LEVELS, start=1):
            x = getattr(self, f"layer{index}")(x)
            features[level] = x
        return features


class _TinyStage(nn.Module):
    """Strided 3x3 conv, then one residual pair of 3x3 convs; GroupNorm keeps it batch-independent."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.down = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.GroupNorm(8, out_channels),
            nn.ReLU(inplace=True),
        )
        self.residual = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(8, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(8, out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.down(x)
        return torch.relu(x + self.residual(x))


class TinyBackbone(nn.Module):
    """Four-stage conv net with ResNet's output interface, for CPU tests and synthetic data.

    GroupNorm rather than BatchNorm: results then do not depend on how a global batch is split
    over devices or accumulation steps. Input (B, 3, H, W); res2 (B, c0, H/4, W/4) ...
    res5 (B, c3, H/32, W/32).
    """

    def __init__(self, channels: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.stem = _TinyStage(3, channels[0], stride=2)
        in_channels = channels[0]
        self.stages = nn.ModuleList()
        for out_channels in channels:  # each halves the size: res2 /4, res3 /8, res4 /16, res5 /32
            self.stages.append(_TinyStage(in_channels, out_channels, stride=2))
            in_channels = out_channels
        self.out_channels = dict(zip(LEVELS, channels))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = self.stem(images)
        features = {}
        for level, stage in zip(LEVELS, self.stages):
            x = stage(x)
            features[level] = x
        return features


def build_backbone(
    name: Literal["resnet50", "resnet101", "tiny"],
    *,
    norm: NormName = "frozen_bn",
    tiny_channels: tuple[int, int, int, int] = (16, 32, 64, 128),
) -> ResNet | TinyBackbone:
    if name == "tiny":
        return TinyBackbone(tiny_channels)
    return ResNet(RESNET_DEPTHS[name], norm)


def _is_ignored_key(key: str) -> bool:
    # The ImageNet classifier has no use here; BatchNorm's step counter carries no weights.
    return key.startswith("fc.") or key.endswith("num_batches_tracked")


def _summarise(keys: set[str], limit: int = 3) -> str:
    ordered = sorted(keys)
    shown = ", ".join(ordered[:limit])
    return shown + (f", ... ({len(ordered)} in all)" if len(ordered) > limit else "")


def load_backbone_weights(backbone: nn.Module, path: Path | str) -> None:
    """Load a local torchvision-layout state dict into ``backbone``; nothing is downloaded.

    Accepts a plain state dict or one nested under "state_dict" or "model". ``fc.*`` and
    ``num_batches_tracked`` entries are ignored; any other missing or unexpected key, or a shape
    mismatch, raises :class:`BackboneWeightsError` with a one-line message.
    """
    path = Path(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BackboneWeightsError(f"{path}: weights file not found") from None
    except Exception as error:  # unpickling errors have many types; all mean "not a state dict"
        # torch's own message suggests weights_only=False, which would run code from the file: not repeated.
        raise BackboneWeightsError(
            f"{path}: cannot read as a PyTorch state dict of tensors ({type(error).__name__}); "
            "save torchvision ResNet weights with torch.save(model.state_dict(), path)"
        ) from None
    for nested in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(nested), dict):
            loaded = loaded[nested]
            break
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise BackboneWeightsError(f"{path}: does not hold a state dict of tensors")
    provided = {k: v for k, v in loaded.items() if not _is_ignored_key(k)}
    expected = {k for k in backbone.state_dict() if not _is_ignored_key(k)}
    missing, unexpected = expected - provided.keys(), provided.keys() - expected
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys ({_summarise(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_summarise(unexpected)})")
        raise BackboneWeightsError(
            f"{path}: weights do not fit the backbone: {'; '.join(parts)}; "
            "expected torchvision ResNet key names of the configured depth"
        )
    own = backbone.state_dict()
    wrong_shape = {k for k, v in provided.items() if v.shape != own[k].shape}
    if wrong_shape:
        key = sorted(wrong_shape)[0]
        raise BackboneWeightsError(
            f"{path}: {len(wrong_shape)} tensors have the wrong shape, e.g. {key} "
            f"{tuple(provided[key].shape)} vs {tuple(own[key].shape)}"
        )
    backbone.load_state_dict(provided, strict=False)
