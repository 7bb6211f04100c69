"""Streaming confusion matrix over (prediction, ground truth) label maps.

Rows are ground-truth classes, columns predicted classes, both 0..K-1. The whole dataset is
accumulated into one matrix (dataset-level IoU, as detectron2 and mmsegmentation do; averaging
per-image IoUs gives different and noisier numbers), so memory stays constant however many images
are added.

Three kinds of pixel are told apart:

* ground truth == ``ignore_index``: skipped entirely (whatever was predicted there), only counted
  in :attr:`ConfusionMatrix.ignored_pixels` so a report can warn when ignore dominates;
* ground truth outside 0..K-1 and not ``ignore_index``: a data error (wrong label offset, wrong
  class count). :meth:`ConfusionMatrix.update` raises instead of silently dropping such pixels,
  which is the mmsegmentation ``histc`` pitfall;
* ground truth a class but prediction outside 0..K-1 (for example 255 = "no prediction"): a miss.
  The pixel adds to the false negatives of its ground-truth class and to no class's false
  positives. A (K, K) matrix cannot hold such a pixel, so it is kept in an extra column K; the
  full (K, K+1) table is :attr:`ConfusionMatrix.counts`, the plain (K, K) block is
  :attr:`ConfusionMatrix.matrix`, column K is :attr:`ConfusionMatrix.missed`.
"""

from __future__ import annotations

import numpy as np

# A uint8 (gt, pred) pair packs into one uint16 key, so one bincount over 65536 bins counts every
# combination without masking or int64 index arithmetic; the 256x256 histogram is then folded
# into the (K, K+1) table. This beats a masked ``bincount(K * gt + pred)`` (see
# benchmarks/eval_speed.py) and is the common case: labels are stored as uint8 when K < 255.
_BYTE_PAIRS = 256 * 256


def _prediction_as_bytes(pred: np.ndarray) -> np.ndarray:
    """Any integer prediction -> uint8 keeping 0..254 and sending every other value to 255.

    Only used when K <= 255, so 255 is never a class and a non-class prediction stays a miss.
    Seen as unsigned, negative values are huge, so one clamp at 255 handles both ends without a
    mask; the clamp writes straight into the uint8 result (no wide temporary). This keeps int64
    argmax output on the fast path (0.15 ms per 512x683 map instead of ~9 ms on the general one).
    """
    if pred.dtype == np.uint8:
        return pred
    unsigned = pred.view(pred.dtype.str.replace("i", "u"))  # keeps the byte order
    out = np.empty(pred.shape, dtype=np.uint8)
    np.minimum(unsigned, 255, out=out, casting="unsafe")
    return out


class ConfusionMatrix:
    """Accumulates a (K, K) int64 confusion matrix plus per-class misses and ignored pixels."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is a class id (classes are 0..{num_classes - 1})")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self._counts = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
        self.ignored_pixels = 0
        self.num_images = 0

    @classmethod
    def from_array(
        cls, counts: np.ndarray, ignore_index: int = 255, *, ignored_pixels: int = 0, num_images: int = 0
    ) -> ConfusionMatrix:
        """Rebuild from a saved table: (K, K) without misses, or (K, K+1) as :attr:`counts` gives."""
        array = np.asarray(counts)
        if array.ndim != 2 or array.shape[1] not in (array.shape[0], array.shape[0] + 1):
            raise ValueError(f"expected a (K, K) or (K, K+1) table, got shape {array.shape}")
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"confusion counts must be integers, got dtype {array.dtype}")
        if array.size and array.min() < 0:
            raise ValueError("confusion counts must not be negative")
        if ignored_pixels < 0 or num_images < 0:
            raise ValueError("ignored_pixels and num_images must not be negative")
        result = cls(array.shape[0], ignore_index)
        result._counts[:, : array.shape[1]] = array
        result.ignored_pixels = int(ignored_pixels)
        result.num_images = int(num_images)
        return result

    @property
    def matrix(self) -> np.ndarray:
        """(K, K) int64 copy: rows ground truth, columns prediction; misses are not in it."""
        return self._counts[:, : self.num_classes].copy()

    @property
    def missed(self) -> np.ndarray:
        """(K,) int64: labelled pixels of each ground-truth class whose prediction was not a class."""
        return self._counts[:, self.num_classes].copy()

    @property
    def counts(self) -> np.ndarray:
        """(K, K+1) int64 copy: :attr:`matrix` with :attr:`missed` as column K (what to save)."""
        return self._counts.copy()

    def update(self, prediction: np.ndarray, ground_truth: np.ndarray) -> None:
        """Add one label-map pair (any shape, both the same; integer dtypes).

        The pair is counted into a local table first and added only when it is valid, so a
        rejected pair leaves the matrix as it was.
        """
        pred = np.asarray(prediction)
        gt = np.asarray(ground_truth)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
        for name, array in (("prediction", pred), ("ground truth", gt)):
            if not np.issubdtype(array.dtype, np.integer):  # bool is not an integer type here
                raise ValueError(f"{name} must be an integer label map, got dtype {array.dtype}")
        if gt.dtype == np.uint8 and self.num_classes <= 255:
            local, ignored = self._count_bytes(_prediction_as_bytes(pred), gt)
        else:
            local, ignored = self._count_general(pred, gt)
        self._counts += local
        self.ignored_pixels += ignored
        self.num_images += 1

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts into this one (e.g. from another worker); returns self."""
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(
                f"cannot merge a {other.num_classes}-class matrix (ignore {other.ignore_index}) into a "
                f"{self.num_classes}-class one (ignore {self.ignore_index})"
            )
        self._counts += other._counts
        self.ignored_pixels += other.ignored_pixels
        self.num_images += other.num_images
        return self

    def _count_bytes(self, pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, int]:
        k = self.num_classes
        # gt in the high byte, pred in the low byte: a uint16 temporary, never an int64 one.
        key = np.left_shift(gt, 8, dtype=np.uint16)
        key |= pred
        pairs = np.bincount(key.ravel(), minlength=_BYTE_PAIRS).reshape(256, 256)
        # A uint8 ground truth can only equal an ignore value that fits in a byte.
        ignore_row = self.ignore_index if 0 <= self.ignore_index <= 255 else None
        bad = pairs[k:].any(axis=1)
        if ignore_row is not None:
            bad[ignore_row - k] = False
        if bad.any():
            self._raise_bad_ground_truth(np.flatnonzero(bad) + k)
        local = np.empty((k, k + 1), dtype=np.int64)
        local[:, :k] = pairs[:k, :k]
        local[:, k] = pairs[:k, k:].sum(axis=1)
        ignored = int(pairs[ignore_row].sum()) if ignore_row is not None else 0
        return local, ignored

    def _count_general(self, pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, int]:
        # Wide ground truth (K >= 255 needs it): mask and index explicitly, about 7x slower.
        k = self.num_classes
        gt = gt.ravel()
        pred = pred.ravel()
        labelled = (gt >= 0) & (gt < k)
        is_ignore = gt == self.ignore_index
        bad = ~(labelled | is_ignore)
        if bad.any():
            self._raise_bad_ground_truth(np.unique(gt[bad]))
        rows = gt[labelled].astype(np.int64)
        cols = pred[labelled].astype(np.int64)
        cols[(cols < 0) | (cols >= k)] = k
        local = np.bincount(rows * (k + 1) + cols, minlength=k * (k + 1)).reshape(k, k + 1)
        return local, int(np.count_nonzero(is_ignore))

    def _raise_bad_ground_truth(self, values: np.ndarray) -> None:
        shown = ", ".join(str(int(v)) for v in values[:10])
        more = f" (+{len(values) - 10} more)" if len(values) > 10 else ""
        raise ValueError(
            f"ground truth holds values {shown}{more} that are neither a class id "
            f"(0..{self.num_classes - 1}) nor the ignore value {self.ignore_index}; "
            "check the label offset and the class count"
        )
