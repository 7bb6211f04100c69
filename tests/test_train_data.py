"""Training data path: partner choice, step plans, micro-batches, augmentation."""

from __future__ import annotations

import pickle
from multiprocessing.reduction import ForkingPickler

import cv2
import numpy as np
import torch

from simformer_cli.data.augment import augment
from simformer_cli.settings.augment import tiny_augment
from simformer_cli.data.pairs import PartnerSampler
from simformer_cli.training.train_data import StepBatchSampler, StepPlan, TrainBatch
from simformer_cli.model.targets import targets_from_label_map

# Classes 0-3 base, 4-6 novel. Rows: images.
LABELS = np.array([
    [1, 1, 0, 0, 1, 1, 0],  # 0: novel {4, 5}
    [0, 1, 0, 0, 1, 0, 0],  # 1: novel {4}
    [1, 0, 0, 0, 0, 1, 0],  # 2: novel {5}
    [0, 0, 1, 0, 1, 1, 0],  # 3: novel {4, 5}
    [0, 0, 0, 1, 0, 0, 0],  # 4: no novel
    [0, 0, 0, 1, 0, 0, 1],  # 5: novel {6} only here
    [1, 0, 0, 1, 0, 0, 0],  # 6: no novel, shares base 3 with 4 and 5
], dtype=bool)
NOVEL, BASE = [4, 5, 6], [0, 1, 2, 3]


def novel_set(index: int) -> set[int]:
    return {c for c in NOVEL if LABELS[index, c]}


def test_partner_shares_exactly_one_novel_class() -> None:
    sampler = PartnerSampler(LABELS, NOVEL, BASE)
    rng = np.random.default_rng(0)
    for anchor in (0, 1, 2, 3):
        for _ in range(30):
            partner = sampler.partner(anchor, rng)
            assert partner != anchor
            shared = novel_set(anchor) & novel_set(partner)
            if anchor in (0, 3):
                assert len(shared) == 1  # {4,5} anchors meet 1 ({4}) or 2 ({5}) only
            else:
                assert shared == novel_set(anchor)  # single-novel anchors get a partner too (bug 4 fixed)


def test_partner_without_novel_classes_shares_a_base_class() -> None:
    sampler = PartnerSampler(LABELS, NOVEL, BASE)
    rng = np.random.default_rng(1)
    for _ in range(20):
        partner = sampler.partner(4, rng)
        assert partner in (5, 6)
    # Image 5's novel class appears nowhere else: fall back to a base-sharing partner.
    assert all(sampler.partner(5, rng) in (4, 6) for _ in range(10))


def test_step_plan_is_deterministic_and_covers_each_epoch() -> None:
    plan = StepPlan(seed=3, num_images=10, batch_size=2, pairs=False)
    keys = [k for step in range(5) for k in plan.keys(step, None)]
    assert sorted(k[2] for k in keys) == list(range(10))
    assert keys == [k for step in range(5) for k in plan.keys(step, None)]


def test_micro_batches_partition_the_global_batch_and_keep_pairs() -> None:
    sampler = PartnerSampler(LABELS, NOVEL, BASE)
    plan = StepPlan(seed=0, num_images=len(LABELS), batch_size=8, pairs=True)
    parts = []
    for rank in range(2):
        batches = list(StepBatchSampler(plan, sampler, start=4, stop=5, rank=rank, world_size=2, accumulation=2))
        assert len(batches) == 2 and all(len(b) == 2 for b in batches)
        assert all(b[0][1] % 2 == 0 and b[1][1] == b[0][1] + 1 for b in batches)
        parts += [k for b in batches for k in b]
    assert sorted(parts) == sorted(plan.keys(4, sampler))


def test_augment_shapes_padding_and_labels() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (50, 90, 3), dtype=np.uint8)
    label = rng.integers(0, 4, (50, 90)).astype(np.uint8)
    settings = tiny_augment(64)
    for seed in range(10):
        out_image, out_label, pad = augment(image, label, settings, np.random.default_rng(seed), 255)
        assert out_image.shape == (64, 64, 3) and out_label.shape == (64, 64) and pad.shape == (64, 64)
        assert set(np.unique(out_label[~pad])) <= {0, 1, 2, 3}
        assert (out_label[pad] == 255).all()
    again = augment(image, label, settings, np.random.default_rng(4), 255)
    first = augment(image, label, settings, np.random.default_rng(4), 255)
    assert all(np.array_equal(a, b) for a, b in zip(again, first))


def _jitter_per_pixel(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The colour jitter written out per pixel in float32, drawing in the same order."""
    work = image.astype(np.float32)
    if rng.random() < 0.5:
        work += rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5
    contrast = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    if contrast is not None and contrast_first:
        work *= contrast
    hsv = cv2.cvtColor(np.clip(work, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
    if rng.random() < 0.5:
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 255)
    if rng.random() < 0.5:
        hsv[..., 0] = (hsv[..., 0] + rng.integers(-9, 10)) % 180
    work = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    if contrast is not None and not contrast_first:
        work *= contrast
    return np.clip(work, 0, 255).astype(np.uint8)


def test_colour_jitter_tables_equal_the_per_pixel_arithmetic() -> None:
    from simformer_cli.data.augment import _color_jitter

    images = np.random.default_rng(0).integers(0, 256, (200, 9, 11, 3), dtype=np.uint8)
    for seed, image in enumerate(images):
        view = image[1:, 2:]  # crops reach the jitter as strided views
        expected = _jitter_per_pixel(view, np.random.default_rng(seed))
        np.testing.assert_array_equal(_color_jitter(view, np.random.default_rng(seed)), expected)


def test_a_batch_travels_between_processes_as_one_buffer() -> None:
    """A loader worker sends a batch as one byte buffer: every tensor comes back equal (values,
    dtype, shape), including an image without targets, and all are views of one storage."""
    rng = np.random.default_rng(0)
    label = rng.integers(0, 6, (24, 20)).astype(np.uint8)
    pad = np.zeros((24, 20), dtype=bool)
    pad[20:] = True
    targets = [
        targets_from_label_map(label, pad, base_classes=[1, 2, 3], maskless_classes=[9], ignore_index=255),
        targets_from_label_map(np.full((24, 20), 255, np.uint8), pad, base_classes=[1], maskless_classes=[],
                               ignore_index=255),
    ]
    batch = TrainBatch(images=torch.from_numpy(rng.integers(0, 256, (2, 3, 24, 20), dtype=np.uint8)),
                       targets=targets, keys=[(3, 0, 7), (3, 1, 11)])
    for payload in (pickle.dumps(batch), bytes(ForkingPickler.dumps(batch))):
        back = pickle.loads(payload)
        assert back.keys == batch.keys and torch.equal(back.images, batch.images)
        storages = {back.images.untyped_storage().data_ptr()}
        for sent, got in zip(batch.targets, back.targets):
            for name in sent.__dataclass_fields__:
                a, b = getattr(sent, name), getattr(got, name)
                assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), name
                storages.add(b.untyped_storage().data_ptr())
            got.validate()
        assert len(storages) == 1
    assert back.targets[1].masks.shape == (0, 24, 20)


def test_batch_moves_as_one_buffer() -> None:
    """``TrainBatch.to``: the CPU keeps the batch itself; another device gets every tensor from one
    copy of one buffer, equal to the original (here the copy is made on the CPU to check it)."""
    rng = np.random.default_rng(1)
    label = rng.integers(0, 4, (16, 12)).astype(np.uint8)
    pad = np.zeros((16, 12), dtype=bool)
    targets = [targets_from_label_map(label, pad, base_classes=[1, 2], maskless_classes=[3], ignore_index=255)]
    batch = TrainBatch(images=torch.from_numpy(rng.integers(0, 256, (1, 3, 16, 12), dtype=np.uint8)),
                       targets=targets, keys=[(0, 0, 5)])
    assert batch.to(torch.device("cpu")) is batch
    for source in (batch, pickle.loads(pickle.dumps(batch))):  # built here, or received from a worker
        moved = source.moved(torch.device("cpu"))
        assert moved.keys == batch.keys and torch.equal(moved.images, batch.images)
        storages = {tensor.untyped_storage().data_ptr() for tensor in moved.tensors()}
        assert len(storages) == 1
        for sent, got in zip(batch.tensors(), moved.tensors()):
            assert sent.dtype == got.dtype and torch.equal(sent, got)
