"""Per-image semantic scores at the image's original resolution.

Each view resizes the image so its short side is ``short_side x scale`` (long side capped), pads
to a multiple of 32, runs the network, turns query outputs into class scores
S_c = sum_q softmax(z_q)[c] * sigmoid(m_q), upsamples them to the padded input, crops the padding
and resizes to the original size. Views (scales, and mirrored copies with ``flip``) are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from simformer_cli.devices import Runtime
from simformer_cli.model import SIZE_DIVISOR, MaskFormer, normalize_images, semantic_scores
from simformer_cli.settings.test_time import TestTimeSettings

@torch.no_grad()
def predict_scores(
    model: MaskFormer, images: Sequence[np.ndarray], settings: TestTimeSettings, device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """(K, H, W) float32 scores for each (H, W, 3) uint8 image; images may differ in size."""
    results = []
    for image in images:
        height, width = image.shape[:2]
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].to(device).float()
        total = None
        views = 0
        for scale in settings.scales:
            vh, vw = settings.view_size(height, width, scale)
            resized = F.interpolate(tensor, size=(vh, vw), mode="bilinear", align_corners=False)
            ph, pw = -(-vh // SIZE_DIVISOR) * SIZE_DIVISOR, -(-vw // SIZE_DIVISOR) * SIZE_DIVISOR
            views_in = [resized, resized.flip(-1)] if settings.flip else [resized]
            batch = torch.cat([F.pad(normalize_images(v), (0, pw - vw, 0, ph - vh)) for v in views_in])
            with torch.autocast(device_type=device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                outputs = model(batch)
            scores = semantic_scores(outputs["pred_logits"], outputs["pred_masks"])  # (V, K, ph/4, pw/4)
            scores = F.interpolate(scores, size=(ph, pw), mode="bilinear", align_corners=False)[..., :vh, :vw]
            if settings.flip:
                scores = torch.stack([scores[0], scores[1].flip(-1)])
            scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False).sum(0)
            total = scores if total is None else total + scores
            views += 2 if settings.flip else 1
        results.append((total / views).float())
    return results


class MaskFormerScorer:
    """``scorer(index, image)`` -> (K, H, W) float32 semantic scores of a MaskFormer under ``test_time``."""

    def __init__(self, model: MaskFormer, test_time: TestTimeSettings, runtime: Runtime) -> None:
        self.model, self.test_time, self.runtime = model, test_time, runtime

    def __call__(self, index: int, image: np.ndarray) -> torch.Tensor:
        return predict_scores(self.model, [image], self.test_time, self.runtime.device, self.runtime.autocast_dtype)[0]
