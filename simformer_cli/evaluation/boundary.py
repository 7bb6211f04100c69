"""Boundary quality: the mIoU of the pixels near a ground-truth label edge (a trimap band).

A pixel is an edge pixel when a 4-neighbour holds another class (ignore on either side makes no
edge: an unlabelled region's outline is not a class boundary). The band holds the pixels within
``width - 1`` pixels (chessboard distance) of an edge pixel, so ``width`` pixels on each side of
every edge. Inside it, predictions are counted into their own confusion matrix and scored as the
whole image is (SimFormer's mIoU convention), so a model that gets the regions right but blurs
their borders scores lower here than over the whole image.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from simformer_cli.artifacts.metrics import MAX_BOUNDARY_BAND, BoundaryResult
from simformer_cli.evaluation.confusion import ConfusionMatrix
from simformer_cli.evaluation.metrics import compute_report


def boundary_band(label: np.ndarray, width: int, ignore_index: int) -> np.ndarray:
    """(H, W) ground truth -> (H, W) bool: the pixels within ``width`` pixels of a label edge."""
    if not 1 <= width <= MAX_BOUNDARY_BAND:
        raise ValueError(f"band width {width}: expected 1 to {MAX_BOUNDARY_BAND} pixels")
    labelled = label != ignore_index
    edge = np.zeros(label.shape, dtype=bool)
    vertical = (label[1:] != label[:-1]) & labelled[1:] & labelled[:-1]
    horizontal = (label[:, 1:] != label[:, :-1]) & labelled[:, 1:] & labelled[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    if width == 1:
        return edge
    kernel = np.ones((2 * width - 1, 2 * width - 1), dtype=np.uint8)
    return cv2.dilate(edge.view(np.uint8), kernel).astype(bool)


class BoundaryConfusion:
    """A confusion matrix of the band pixels only, accumulated image by image."""

    def __init__(self, num_classes: int, ignore_index: int, width: int) -> None:
        self.width = width
        self.ignore_index = ignore_index
        self.table = ConfusionMatrix(num_classes, ignore_index)

    def update(self, prediction: np.ndarray, ground_truth: np.ndarray) -> None:
        truth = np.asarray(ground_truth)
        band = boundary_band(truth, self.width, self.ignore_index)
        self.table.update(np.asarray(prediction)[band], truth[band])

    def result(self, class_names: Sequence[str], base_classes: Sequence[int],
               novel_classes: Sequence[int]) -> BoundaryResult | None:
        """The band's mIoU (all, base, novel); None when no evaluated image has a labelled edge."""
        pixels = int(self.table.counts.sum())
        if pixels == 0:
            return None
        report = compute_report(self.table, class_names, base_classes, novel_classes,
                                num_images=self.table.num_images, ignored_pixels=self.table.ignored_pixels)
        return BoundaryResult(width=self.width, pixels=pixels, miou=report.miou, base_miou=report.base_miou,
                              novel_miou=report.novel_miou)
