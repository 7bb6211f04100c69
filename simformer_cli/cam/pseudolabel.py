"""Refined novel-class scores of a training image: what a CAM model hands the pseudo-label rule.

Per image: the CAMs of every requested view (test-time scales, mirrored copies) are made
non-negative, mapped back onto the image and summed; only the image's novel classes (from its
image-level label) are kept, each divided by its maximum; a random walk on the affinity of the
plain (scale 1, unmirrored) view refines them on the stride-4 grid; each is divided by its maximum
again, so ``min_score`` reads "a share of the class's peak" (with the default 0 a pixel where every
candidate scores 0 takes the lowest-numbered one: it is ignored in the weak label of an image
with novel classes, so most likely novel). Every other class scores -1, so the
shared :class:`~simformer_cli.inference.pseudolabel.PseudoLabelRule` (argmax, image-level novel
classes only, base ground truth on top) picks among the image's novel classes only, and an image
without novel classes keeps its weak label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.cam.affinity import random_walk, transition
from simformer_cli.cam.network import AFFINITY_STRIDE, CAM_STRIDE, CamNet
from simformer_cli.devices import Runtime
from simformer_cli.model.maskformer import SIZE_DIVISOR, normalize_images
from simformer_cli.settings.cam import CamSettings
from simformer_cli.settings.test_time import TestTimeSettings

NOT_A_CANDIDATE = -1.0


def peak_normalised(scores: Tensor) -> Tensor:
    """(..., C, h, w) -> each class map divided by its maximum (an all-zero map stays zero)."""
    return scores / scores.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-5)


def refine_cams(cams: Tensor, embedding: Tensor, settings: CamSettings) -> Tensor:
    """(1, C, h, w) non-negative CAMs and (1, D, h, w) embedding -> refined scores in [0, 1]."""
    transitions = transition(embedding, settings.affinity_radius, settings.walk_beta)
    walked = random_walk(peak_normalised(cams), transitions, settings.affinity_radius, settings.walk_iterations)
    return peak_normalised(walked)


class CamScorer:
    """``scorer(indices, images)`` -> (K, H, W) float32 scores of each train image (see the module
    doc); ``scorer.one(index, image)`` for one."""

    def __init__(self, network: CamNet, split: SplitArtifact, settings: CamSettings, test_time: TestTimeSettings,
                 runtime: Runtime) -> None:
        manifest = split.manifest
        is_novel = np.zeros(len(manifest.class_names), dtype=bool)
        is_novel[manifest.novel_classes] = True
        self.candidates = split.image_labels("train") & is_novel
        self.network, self.settings, self.test_time, self.runtime = network, settings, test_time, runtime

    def _view(self, image: Tensor, scale: float, mirrored: bool) -> tuple[dict[str, Tensor], tuple[int, int]]:
        """The network's outputs for one view of a (1, 3, H, W) image, and the view's unpadded size."""
        height, width = image.shape[-2:]
        vh, vw = self.test_time.view_size(height, width, scale)
        view = F.interpolate(image, size=(vh, vw), mode="bilinear", align_corners=False)
        ph, pw = -(-vh // SIZE_DIVISOR) * SIZE_DIVISOR, -(-vw // SIZE_DIVISOR) * SIZE_DIVISOR
        view = F.pad(normalize_images(view.flip(-1) if mirrored else view), (0, pw - vw, 0, ph - vh))
        device, dtype = self.runtime.device, self.runtime.autocast_dtype
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
            outputs = self.network(view)
        return {name: value.float() for name, value in outputs.items()}, (vh, vw)

    def _summed_cams(self, image: Tensor, classes: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
        """Non-negative CAMs of ``classes`` summed over the views, at ``size`` (the plain view's
        unpadded size), and the plain view's embedding when it is one of the views."""
        total, embedding = torch.zeros(()), None
        for scale in self.test_time.scales:
            for mirrored in (False, True) if self.test_time.flip else (False,):
                outputs, (vh, vw) = self._view(image, scale, mirrored)
                padded = (outputs["cams"].shape[-2] * CAM_STRIDE, outputs["cams"].shape[-1] * CAM_STRIDE)
                cams = F.interpolate(outputs["cams"][:, classes], size=padded, mode="bilinear", align_corners=False)
                cams = cams[..., :vh, :vw].flip(-1) if mirrored else cams[..., :vh, :vw]
                total = total.to(cams.device) + F.interpolate(cams, size=size, mode="bilinear", align_corners=False).relu()
                if scale == 1.0 and not mirrored:
                    embedding = outputs["embedding"]
        return total, embedding

    def __call__(self, indices: Sequence[int], images: Sequence[np.ndarray]) -> list[Tensor]:
        return [self.one(index, image) for index, image in zip(indices, images)]

    @torch.no_grad()
    def one(self, index: int, image: np.ndarray) -> Tensor:
        height, width = image.shape[:2]
        scores = torch.full((self.candidates.shape[1], height, width), NOT_A_CANDIDATE)
        classes = torch.from_numpy(np.flatnonzero(self.candidates[index]))
        if not len(classes):
            return scores
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].to(self.runtime.device).float()
        vh, vw = self.test_time.view_size(height, width)
        cams, embedding = self._summed_cams(tensor, classes.to(tensor.device), (vh, vw))
        if embedding is None:
            embedding = self._view(tensor, 1.0, False)[0]["embedding"]
        gh, gw = math.ceil(vh / AFFINITY_STRIDE), math.ceil(vw / AFFINITY_STRIDE)
        # Cell (i, j) of the walk covers view pixels [4i, 4i + 4) x [4j, 4j + 4), as in the embedding.
        cams = F.pad(cams, (0, gw * AFFINITY_STRIDE - vw, 0, gh * AFFINITY_STRIDE - vh), mode="replicate")
        refined = refine_cams(F.avg_pool2d(cams, AFFINITY_STRIDE), embedding[..., :gh, :gw], self.settings)
        refined = F.interpolate(refined, scale_factor=AFFINITY_STRIDE, mode="bilinear", align_corners=False)
        refined = F.interpolate(refined[..., :vh, :vw], size=(height, width), mode="bilinear", align_corners=False)
        scores[classes] = refined[0].cpu()
        return scores
