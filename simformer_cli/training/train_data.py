"""The training data path: which images each step sees, and how one becomes (image, targets).

Every random choice is a pure function of ``(seed, step, slot)``, so the batches of step ``t`` are
the same whether the run was interrupted or not, whatever the number of loader workers or
processes: resuming needs nothing but the step number.

Only weak labels reach training: the ``train/labels`` array of a split (novel pixels are ignore)
or a pseudo-label artifact's labels, plus whole-image image-level labels. The audit group with the
full train labels is never opened here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.data.augment import augment
from simformer_cli.data.pairs import PartnerSampler
from simformer_cli.model.targets import ImageTargets, targets_from_label_map
from simformer_cli.settings.augment import AugmentSettings

SampleKey = tuple[int, int, int]  # (step, slot in the global batch, image index)


@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, count: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(count)


class LabelReader(Protocol):
    """Label map of a training image by index. A reader may also offer ``read_range(start, stop)``
    (the labels of ``start..stop-1`` in one read), which the cache fill then uses."""

    def __call__(self, index: int) -> np.ndarray: ...


@dataclass(frozen=True)
class StepPlan:
    """Which images form each global batch: anchors walk seeded epoch permutations; in pair mode
    every anchor is followed by its partner."""

    seed: int
    num_images: int
    batch_size: int
    pairs: bool

    def keys(self, step: int, partners: PartnerSampler | None) -> list[SampleKey]:
        anchors_per_step = self.batch_size // 2 if self.pairs else self.batch_size
        keys: list[SampleKey] = []
        for a in range(anchors_per_step):
            position = step * anchors_per_step + a
            epoch, offset = divmod(position, self.num_images)
            anchor = int(_epoch_order(self.seed, epoch, self.num_images)[offset])
            if self.pairs:
                assert partners is not None
                partner = partners.partner(anchor, np.random.default_rng([self.seed, step, a, 1]))
                keys += [(step, 2 * a, anchor), (step, 2 * a + 1, partner)]
            else:
                keys.append((step, a, anchor))
        return keys


class StepBatchSampler(Sampler[list[SampleKey]]):
    """Yields, for steps ``start..stop-1``, this process's micro-batches of the global batch.

    The global batch is cut into ``world_size * accumulation`` equal micro-batches; pairs are never
    split because every micro-batch has an even size in pair mode.
    """

    def __init__(self, plan: StepPlan, partners: PartnerSampler | None, *, start: int, stop: int,
                 rank: int, world_size: int, accumulation: int) -> None:
        parts = world_size * accumulation
        if plan.batch_size % parts or (plan.pairs and (plan.batch_size // parts) % 2):
            raise ValueError(f"batch {plan.batch_size} cannot be cut into {parts} micro-batches"
                             + (" of whole pairs" if plan.pairs else ""))
        self.plan, self.partners = plan, partners
        self.start, self.stop = start, stop
        self.rank, self.world_size, self.accumulation = rank, world_size, accumulation
        self.micro = plan.batch_size // parts

    def __len__(self) -> int:
        return (self.stop - self.start) * self.accumulation

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for step in range(self.start, self.stop):
            keys = self.plan.keys(step, self.partners)
            for m in range(self.accumulation):
                first = (m * self.world_size + self.rank) * self.micro
                yield keys[first : first + self.micro]


@dataclass
class TrainBatch:
    images: torch.Tensor  # (B, 3, H, W) uint8
    targets: list[ImageTargets]
    keys: list[SampleKey]
    # When every tensor above is a view into one byte buffer: that buffer and its layout.
    packed: tuple[torch.Tensor, list] | None = field(default=None, repr=False, compare=False)

    def tensors(self) -> list[torch.Tensor]:
        return [self.images] + [getattr(t, name) for t in self.targets for name in _TARGET_FIELDS]

    def __reduce__(self) -> tuple:
        """Pickled (as a loader worker sends it) as one byte buffer holding every tensor.

        A DataLoader worker hands each tensor over through its own shared-memory file; a batch
        has six per image, and receiving that many cost more than building the batch in the
        training process. One buffer is one file; the tensors come back as views into it.
        """
        buffer, layout = self.packed or pack_tensors(self.tensors())
        return _unpack_batch, (buffer, layout, self.keys)

    def pin_memory(self) -> TrainBatch:
        """The batch in page-locked memory, as one buffer (the DataLoader's ``pin_memory=True``
        calls this, on its pinning thread, while the GPU works on the previous step)."""
        return _unpack_batch(*pack_tensors(self.tensors(), pin=True), self.keys)

    def to(self, device: torch.device, non_blocking: bool = False) -> TrainBatch:
        """The batch on ``device``: one copy of one buffer (asynchronous from pinned memory)
        instead of seven small copies an image. On the CPU, the batch itself."""
        if device.type == "cpu":
            return self
        return self.moved(device, non_blocking)

    def moved(self, device: torch.device, non_blocking: bool = False) -> TrainBatch:
        buffer, layout = self.packed or pack_tensors(self.tensors())
        return _unpack_batch(buffer.to(device, non_blocking=non_blocking and buffer.is_pinned()), layout, self.keys)


_TARGET_FIELDS = tuple(ImageTargets.__dataclass_fields__)
_ALIGN = 64  # bytes between the packed tensors' starts: any dtype's view is aligned


def pack_tensors(tensors: Sequence[torch.Tensor], *, pin: bool = False,
                 ) -> tuple[torch.Tensor, list[tuple[int, int, torch.dtype, tuple[int, ...]]]]:
    """CPU tensors -> one uint8 buffer holding their values (page-locked with ``pin``), and
    (offset, bytes, dtype, shape) of each."""
    layout, total = [], 0
    for tensor in tensors:
        size = tensor.numel() * tensor.element_size()
        layout.append((total, size, tensor.dtype, tuple(tensor.shape)))
        total += -(-size // _ALIGN) * _ALIGN
    buffer = torch.empty(total, dtype=torch.uint8, pin_memory=pin)
    for tensor, view in zip(tensors, unpack_tensors(buffer, layout)):
        view.copy_(tensor)
    return buffer, layout


def unpack_tensors(buffer: torch.Tensor, layout: Sequence[tuple[int, int, torch.dtype, tuple[int, ...]]]) -> list[torch.Tensor]:
    """The tensors of :func:`pack_tensors`, as views into ``buffer`` (no copy)."""
    return [buffer[offset : offset + size].view(dtype).view(shape) for offset, size, dtype, shape in layout]


def _unpack_batch(buffer: torch.Tensor, layout: list, keys: list[SampleKey]) -> TrainBatch:
    tensors = unpack_tensors(buffer, layout)
    fields = len(_TARGET_FIELDS)
    targets = [ImageTargets(*tensors[1 + i * fields : 1 + (i + 1) * fields]) for i in range(len(keys))]
    return TrainBatch(images=tensors[0], targets=targets, keys=keys, packed=(buffer, layout))


class WeakTrainingSet(Dataset):
    """(augmented image, targets) for a sample key. Opens the split lazily in each worker."""

    def __init__(self, split_path: Path, *, augment_settings: AugmentSettings, seed: int,
                 label_reader: LabelReader | None = None, maskless_novel: bool = True,
                 crop_label_reader: LabelReader | None = None, cache_bytes: int = 0) -> None:
        """``crop_label_reader`` (paper parity, ``image_labels=crop``): full labels from which the
        novel classes inside each crop are read; without it the novel image-level labels are the
        whole image's, as a weak label is.

        ``cache_bytes``: decoded images and their labels are kept in memory up to this many bytes
        per process, so that later epochs of a small dataset skip the reads. First come, first
        kept; the cached arrays are read-only, and the samples made from them are the same. When
        the whole training subset fits, the first batch fills the cache in one bulk read per shard
        (:meth:`preload`), so even the first epoch skips the per-image reads."""
        self.split_path = Path(split_path)
        self.crop_label_reader = crop_label_reader
        self.augment_settings = augment_settings
        self.seed = seed
        self.label_reader = label_reader
        self.maskless_novel = maskless_novel
        self.cache_bytes = cache_bytes
        self._split: SplitArtifact | None = None
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._cached_bytes = 0
        self._preloaded = False

    def __getstate__(self) -> dict:
        """Workers start with an empty cache and open the split themselves."""
        return {**self.__dict__, "_split": None, "_cache": {}, "_cached_bytes": 0, "_preloaded": False}

    def preload(self) -> bool:
        """Fill the cache with every training image and its label when they all fit in
        ``cache_bytes``, reading the split one shard at a time (a shard is one file: one read
        instead of one per image). Labels from a ``label_reader`` are read through it. Runs once
        per process; returns whether the cache now holds the whole subset."""
        if self._preloaded:
            return len(self._cache) == len(self)
        self._preloaded = True
        split = self.split
        sizes = split.sizes("train").astype(np.int64)
        label_itemsize = np.dtype(split.manifest.arrays["train/labels"].dtype).itemsize
        needed = int((sizes[:, 0] * sizes[:, 1]).sum()) * (3 + label_itemsize)
        if needed > self.cache_bytes - self._cached_bytes:
            return False
        count, step = len(self), split.images_per_shard("train")
        with_labels = self.label_reader is None
        read_labels = getattr(self.label_reader, "read_range", None)  # a reader may read a range at once
        for start in range(0, count, step):
            todo = [index for index in range(start, min(start + step, count)) if index not in self._cache]
            if not todo:
                continue
            first, stop = todo[0], todo[-1] + 1
            images, labels = split.read_range("train", first, stop, labels=with_labels)
            if not with_labels:
                labels = (read_labels(first, stop) if read_labels is not None
                          else [self.label_reader(index) for index in range(first, stop)])  # type: ignore[misc]
            for index in todo:
                self._keep(index, images[index - first], labels[index - first])
        return len(self._cache) == count

    def _keep(self, index: int, image: np.ndarray, label: np.ndarray) -> None:
        """Cache a decoded image and its label read-only, if the budget has room."""
        size = image.nbytes + label.nbytes
        if self._cached_bytes + size <= self.cache_bytes:
            image.setflags(write=False)
            label.setflags(write=False)
            self._cache[index] = (image, label)
            self._cached_bytes += size

    @property
    def split(self) -> SplitArtifact:
        if self._split is None:
            self._split = SplitArtifact(self.split_path)
        return self._split

    def __len__(self) -> int:
        return self.split.count("train")

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, ImageTargets, SampleKey]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[SampleKey]) -> list[tuple[torch.Tensor, ImageTargets, SampleKey]]:
        """A whole (micro-)batch: its split reads are issued together (the DataLoader calls this)."""
        if self.cache_bytes and not self._preloaded:
            self.preload()
        indices = [index for _, _, index in keys]
        with_labels = self.label_reader is None
        missing = sorted(set(indices) - self._cache.keys())
        read: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if missing:
            images, labels = self.split.read_many("train", missing, labels=with_labels)
            read = {index: (image, labels[n] if with_labels else self.label_reader(index))  # type: ignore[misc]
                    for n, (index, image) in enumerate(zip(missing, images))}
        for index, (image, label) in read.items():
            self._keep(index, image, label)
        found = [self._cache[index] if index in self._cache else read[index] for index in indices]
        return [self._sample(key, image, label) for key, (image, label) in zip(keys, found)]

    def _sample(self, key: SampleKey, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, ImageTargets, SampleKey]:
        step, slot, index = key
        split = self.split
        manifest = split.manifest
        rng = np.random.default_rng([self.seed, step, slot, 0])
        present = np.flatnonzero(split.image_labels("train")[index])
        novel_classes = set(manifest.novel_classes)
        novel = [int(c) for c in present if c in novel_classes] if self.maskless_novel else []
        if self.crop_label_reader is not None and novel:
            # The released code's labels: the novel classes with pixels inside the crop. The full
            # label rides along as a second channel, so the same draws cut both.
            both = np.stack((label, self.crop_label_reader(index).astype(label.dtype)), axis=-1)
            crop_image, both, pad = augment(image, both, self.augment_settings, rng, manifest.ignore_index)
            label, full = both[..., 0], both[..., 1]
            inside = set(np.unique(full[~pad]).tolist())
            novel = [c for c in novel if c in inside]
        else:
            crop_image, label, pad = augment(image, label, self.augment_settings, rng, manifest.ignore_index)
        targets = targets_from_label_map(
            label, pad,
            base_classes=manifest.base_classes if self.maskless_novel else range(split.num_classes),
            maskless_classes=novel, ignore_index=manifest.ignore_index,
        )
        return torch.from_numpy(np.ascontiguousarray(crop_image)).permute(2, 0, 1), targets, key


def collate(items: Sequence[tuple[torch.Tensor, ImageTargets, SampleKey]]) -> TrainBatch:
    return TrainBatch(
        images=torch.stack([item[0] for item in items]),
        targets=[item[1] for item in items],
        keys=[item[2] for item in items],
    )
