"""Per-image semantic scores at the image's original resolution.

Each view resizes the image so its short side is ``short_side x scale`` (long side capped), pads
to a multiple of 32, runs the network, turns query outputs into class scores
S_c = sum_q softmax(z_q)[c] * sigmoid(m_q), upsamples them to the padded input, crops the padding
and resizes to the original size. Views (scales, and mirrored copies with ``flip``) are averaged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from simformer_cli.devices import Runtime
from simformer_cli.model import SIZE_DIVISOR, MaskFormer, normalize_images, semantic_scores
from simformer_cli.settings.test_time import TestTimeSettings

#: Images of one size that share a forward pass (their views too), at most this many and at most
#: this many pixels together: small images batched run faster than one by one, large ones gain
#: little and would only take memory.
BATCH_IMAGES = 8
BATCH_PIXELS = 2**20


@torch.no_grad()
def predict_scores(
    model: MaskFormer, images: Sequence[np.ndarray], settings: TestTimeSettings, device: torch.device,
    autocast_dtype: torch.dtype | None = None, batch_images: int = BATCH_IMAGES,
) -> list[torch.Tensor]:
    """(K, H, W) float32 scores for each (H, W, 3) uint8 image; images may differ in size. Images
    of the same size go through the network together, up to ``batch_images`` (and
    ``BATCH_PIXELS``) at a time."""
    results: list[torch.Tensor | None] = [None] * len(images)
    for chunk, tensor in same_size_batches(images, device, batch_images):
        for position, scores in zip(chunk, _scores_of_same_size(model, tensor, settings, device, autocast_dtype)):
            results[position] = scores
    return results  # type: ignore[return-value]


def same_size_batches(images: Sequence[np.ndarray], device: torch.device,
                      batch_images: int = BATCH_IMAGES) -> Iterator[tuple[list[int], torch.Tensor]]:
    """The (H, W, 3) uint8 images as (positions, (N, 3, H, W) float tensor on ``device``) batches
    of one size each, at most ``batch_images`` images and ``BATCH_PIXELS`` pixels together."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for position, image in enumerate(images):
        by_size.setdefault(image.shape[:2], []).append(position)
    for (height, width), positions in by_size.items():
        per_batch = max(1, min(batch_images, BATCH_PIXELS // (height * width)))
        for start in range(0, len(positions), per_batch):
            chunk = positions[start : start + per_batch]
            stacked = np.stack([np.asarray(images[k], dtype=np.uint8) for k in chunk])
            yield chunk, torch.from_numpy(stacked).permute(0, 3, 1, 2).to(device).float()


def padded_view(tensor: torch.Tensor, settings: TestTimeSettings, scale: float,
                flip: bool = False) -> tuple[torch.Tensor, tuple[int, int]]:
    """(N, 3, H, W) float images of one size as the network sees them at ``scale``: resized to the
    view's size, normalized and padded at the bottom and right to a multiple of ``SIZE_DIVISOR``
    (``flip``: followed by their mirrored copies, 2N in all); with the view's (height, width)
    before padding."""
    vh, vw = settings.view_size(tensor.shape[-2], tensor.shape[-1], scale)
    resized = F.interpolate(tensor, size=(vh, vw), mode="bilinear", align_corners=False)
    ph, pw = -(-vh // SIZE_DIVISOR) * SIZE_DIVISOR, -(-vw // SIZE_DIVISOR) * SIZE_DIVISOR
    views = [resized, resized.flip(-1)] if flip else [resized]
    return torch.cat([F.pad(normalize_images(v), (0, pw - vw, 0, ph - vh)) for v in views]), (vh, vw)


def _scores_of_same_size(
    model: MaskFormer, tensor: torch.Tensor, settings: TestTimeSettings, device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> torch.Tensor:
    """(N, K, H, W) scores of (N, 3, H, W) float images of one size, averaged over the views."""
    count, _, height, width = tensor.shape
    total = None
    views = 0
    for scale in settings.scales:
        batch, (vh, vw) = padded_view(tensor, settings, scale, settings.flip)
        ph, pw = batch.shape[-2:]
        with torch.autocast(device_type=device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            outputs = model(batch)
        scores = semantic_scores(outputs["pred_logits"], outputs["pred_masks"])  # (V * N, K, ph/4, pw/4)
        scores = F.interpolate(scores, size=(ph, pw), mode="bilinear", align_corners=False)[..., :vh, :vw]
        if settings.flip:
            scores = scores[:count] + scores[count:].flip(-1)
        scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
        total = scores if total is None else total + scores
        views += 2 if settings.flip else 1
    return (total / views).float()


class MaskFormerScorer:
    """``scorer(indices, images)`` -> (K, H, W) float32 semantic scores of each image, from a
    MaskFormer under ``test_time``."""

    def __init__(self, model: MaskFormer, test_time: TestTimeSettings, runtime: Runtime) -> None:
        self.model, self.test_time, self.runtime = model, test_time, runtime

    def __call__(self, indices: Sequence[int], images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        return predict_scores(self.model, images, self.test_time, self.runtime.device, self.runtime.autocast_dtype)
