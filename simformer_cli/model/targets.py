"""What the criterion is told about one training image, and how to build it from a label map.

Target format (one ``ImageTargets`` per image of the batch, all at input resolution H x W, i.e.
the padded crop the network sees):

- ``classes``  int64 (T,): class id of each target, 0 <= id < K. One target per class present.
- ``masks``    bool (T, H, W): the target's pixels; an all-zero row for a target without a mask.
- ``has_mask`` bool (T,): True for targets with a pixel mask (base classes in weak-shot training,
  every class when retraining on pseudo labels), False for targets known only from the
  image-level label (novel classes). The matcher and the losses use this flag, never "is the
  mask empty", so a base region that vanishes under downsampling keeps its mask cost.
- ``base_label`` int64 (H, W): the base class id on base pixels, ``NOT_BASE`` (-1) elsewhere
  (novel, unlabelled and padding pixels alike). This is the only pixel map the similarity
  losses read: novel pixel identities are never needed, and never provided.
- ``pad``      bool (H, W): True on padding added to reach the crop size.
- ``image_classes`` int64 (C,): the sorted image-level label set (base and novel ids).

Targets may come in any order; matching returns indices into this order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

NOT_BASE = -1


@dataclass(frozen=True)
class ImageTargets:
    classes: Tensor
    masks: Tensor
    has_mask: Tensor
    base_label: Tensor
    pad: Tensor
    image_classes: Tensor

    def to(self, device: torch.device | str) -> ImageTargets:
        return ImageTargets(**{name: getattr(self, name).to(device) for name in self.__dataclass_fields__})

    def validate(self) -> None:
        """Raise ValueError when shapes or dtypes break the format above. Runs on every image of
        every training step, so each message is only built for a target that fails."""
        count = self.classes.shape[0]
        size = tuple(self.base_label.shape)
        if not (self.classes.dtype == torch.int64 and self.classes.dim() == 1):
            raise _bad("classes must be int64 (T,)")
        if not (self.masks.dtype == torch.bool and tuple(self.masks.shape) == (count, *size)):
            raise _bad(f"masks must be bool (T, H, W) = ({count}, {size[0]}, {size[1]})")
        if not (self.has_mask.dtype == torch.bool and tuple(self.has_mask.shape) == (count,)):
            raise _bad("has_mask must be bool (T,)")
        if not (self.base_label.dtype == torch.int64 and self.base_label.dim() == 2):
            raise _bad("base_label must be int64 (H, W)")
        if not (self.pad.dtype == torch.bool and tuple(self.pad.shape) == size):
            raise _bad("pad must be bool (H, W)")
        if not (self.image_classes.dtype == torch.int64 and self.image_classes.dim() == 1):
            raise _bad("image_classes must be int64 (C,)")
        maskless = ~self.has_mask
        if bool(maskless.any()) and bool(self.masks[maskless].any()):
            raise _bad("a target with has_mask=False has mask pixels")


def _bad(message: str) -> ValueError:
    return ValueError(f"bad ImageTargets: {message}")


def targets_from_label_map(
    label_map: Tensor | np.ndarray,
    pad: Tensor | np.ndarray,
    *,
    base_classes: Iterable[int],
    maskless_classes: Iterable[int],
    ignore_index: int,
) -> ImageTargets:
    """Targets of one crop from its label map (H, W) and pad map (H, W), as CPU tensors.

    Every class with pixels in ``label_map`` becomes a target with a mask. Each class of
    ``maskless_classes`` without pixels becomes a target without a mask. Weak-shot training passes
    the weak label map (base pixels only; novel pixels are ``ignore_index``) and the image-level
    novel classes as ``maskless_classes``; retraining passes the pseudo-label map and no maskless
    classes. Base classes absent from the crop are simply absent: their pixels are known.

    Built with numpy (a crop's few small array operations cost less there than as torch calls);
    torch tensors are accepted and read on the CPU.
    """
    label = label_map.cpu().numpy() if isinstance(label_map, Tensor) else np.asarray(label_map)
    pad = pad.cpu().numpy() if isinstance(pad, Tensor) else np.asarray(pad)
    pad = pad.astype(bool, copy=False)  # the label keeps its integer dtype: comparisons are cheaper on uint8
    # Counting beats sorting (np.unique) for the few hundred class ids a label map can hold.
    counts = np.bincount(label.ravel())
    present = np.flatnonzero(counts)
    present = present[present != ignore_index]
    maskless = sorted(set(int(c) for c in maskless_classes) - set(present.tolist()))
    classes = np.concatenate((present, np.asarray(maskless, dtype=np.int64)))
    masks = np.zeros((len(classes), *label.shape), dtype=bool)
    masks[: len(present)] = label[None] == present[:, None, None]
    base_of = np.full(len(counts), NOT_BASE, dtype=np.int64)  # class id -> itself if base, else NOT_BASE
    base = [c for c in set(int(c) for c in base_classes) if c < len(counts)]
    base_of[base] = base
    base_label = base_of[label]
    base_label[pad] = NOT_BASE
    return ImageTargets(
        classes=torch.from_numpy(classes),
        masks=torch.from_numpy(masks),
        has_mask=torch.arange(len(classes)) < len(present),
        base_label=torch.from_numpy(base_label),
        pad=torch.from_numpy(pad.copy()),
        image_classes=torch.from_numpy(np.unique(classes)),
    )


def nearest_downsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """maps (N, H, W) of any dtype -> (N, h, w) holding the pixels ``F.interpolate(mode="nearest")``
    picks (source index floor(i * H / h)). When h and w divide H and W that is a strided slice of
    the maps themselves, with no float copy; other sizes go through ``F.interpolate``."""
    height, width = maps.shape[-2:]
    if height % size[0] == 0 and width % size[1] == 0:
        return maps[:, :: height // size[0], :: width // size[1]]
    return F.interpolate(maps[:, None].float(), size=size, mode="nearest")[:, 0].to(maps.dtype)
