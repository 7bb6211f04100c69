"""Reading a raw dataset into a split artifact, on every core.

Two passes over the files. The scan hashes every file (the dataset fingerprint that decides whether
an existing split is up to date) and reads image sizes from headers (to lay out the arrays). The
ingest decodes and validates every image and label and writes whole shards, one worker per shard,
so the bytes written do not depend on the number of workers: a JPEG image's file as it is, with
the crc32 of its pixels, the other images' pixels, and the labels decoded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import zarr
from PIL import Image, UnidentifiedImageError

from simformer_cli.artifacts.digest import file_digest
from simformer_cli.artifacts.image_files import displayed_size, is_jpeg, pixels_crc32
from simformer_cli.artifacts.layout import SubsetLayout, plan_layout, write_files, write_shard_block
from simformer_cli.artifacts.manifest import ArraySpec
from simformer_cli.artifacts.split import AUDIT_LABELS, SOURCE_IMAGE_IDS, SplitSummary, SubsetSummary, create_arrays
from simformer_cli.data.source import RawDataset, Sample, subsets_of
from simformer_cli.errors import DataError
from simformer_cli.progress import Reporter
from simformer_cli.settings.labels import label_dtype_for

Progress = Callable[[int], None]
SCAN_BATCH = 256


def default_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a dataset file; a missing or unreadable one is a :class:`DataError`."""
    try:
        return file_digest(path)
    except FileNotFoundError:
        raise DataError(path, "file is missing", "restore it or remove it from the dataset") from None
    except OSError as exc:
        raise DataError(path, f"cannot be read ({exc.strerror or exc})") from None


def image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            width, height = displayed_size(im)  # as decode_image turns it (EXIF orientation)
    except Image.DecompressionBombError as exc:
        raise DataError(path, f"image is too large to read safely ({str(exc).split(',')[0]})", "resize it or remove it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"not a readable image ({exc})", "re-download or delete the file") from None
    if width == 0 or height == 0:
        raise DataError(path, "image is empty (0 pixels)")
    return height, width


def _scan_batch(
    root: Path, samples: Sequence[Sample], skip: frozenset[str]
) -> tuple[list[tuple[int, int]], list[tuple[str, str]]]:
    sizes, digests = [], []
    for sample in samples:
        files = sample.files()
        sizes.append(image_size(root / files[0]))
        digests.extend((rel, file_sha256(root / rel)) for rel in files if rel not in skip)
    return sizes, digests


@dataclass(frozen=True)
class ShardTask:
    staging: Path
    root: Path
    layout: SubsetLayout
    start: int
    samples: tuple[Sample, ...]
    lut: np.ndarray
    ignore_index: int
    num_classes: int
    novel_classes: tuple[int, ...]
    expected_sizes: np.ndarray
    keep_audit: bool
    coverage: str = "full"  # what the subset's masks hold: "full", "base" (novel classes as tags) or "none"
    class_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ShardResult:
    start: int
    image_labels: np.ndarray  # (n, K) bool
    pixel_counts: np.ndarray  # (K + 1,) int64, last entry = ignore
    kept_as_file: np.ndarray  # (n,) bool: JPEG images, kept as their files
    pixels_crc32: np.ndarray  # (n,) uint32 of a kept file's decoded pixels, else 0


def _ingest_shard(task: ShardTask) -> ShardResult:
    group = zarr.open_group(store=str(task.staging), mode="r+")
    subset = task.layout.subset
    weak_lut = np.arange(task.ignore_index + 1, dtype=np.int64)
    weak_lut[list(task.novel_classes)] = task.ignore_index
    pixels, image_files, stored_labels, full_labels = [], [], [], []
    image_labels = np.zeros((len(task.samples), task.num_classes), dtype=bool)
    pixel_counts = np.zeros(task.num_classes + 1, dtype=np.int64)
    kept = np.zeros(len(task.samples), dtype=bool)
    crcs = np.zeros(len(task.samples), dtype=np.uint32)
    for k, sample in enumerate(task.samples):
        decoded = sample.decode(task.root, task.lut, task.ignore_index)
        if decoded.label is None and task.coverage != "none":
            raise DataError(task.root / sample.files()[0], "has no label; every image of a split needs one")
        if tuple(decoded.image.shape[:2]) != tuple(task.expected_sizes[k]):
            raise DataError(task.root / sample.files()[0], "changed while it was being read; rerun split")
        if decoded.label is None:  # a subset without masks: every pixel unlabelled
            decoded = replace(decoded, label=np.full(decoded.image.shape[:2], task.ignore_index,
                                                     dtype=label_dtype_for(task.num_classes)))
        counts = np.bincount(decoded.label.ravel(), minlength=task.ignore_index + 1)
        image_labels[k] = counts[: task.num_classes] > 0
        if decoded.tags is not None:
            check_masks_untagged(task.root / sample.files()[-1], counts, task.novel_classes, task.class_names)
            image_labels[k, list(decoded.tags)] = True
        pixel_counts[: task.num_classes] += counts[: task.num_classes]
        pixel_counts[-1] += counts[task.ignore_index]
        kept[k] = is_jpeg(decoded.image_file)
        if kept[k]:
            crcs[k] = pixels_crc32(decoded.image)
        pixels.append(np.zeros((0, 0, 3), np.uint8) if kept[k] else decoded.image)  # kept: fill, never stored
        image_files.append(decoded.image_file if kept[k] else b"")
        full_labels.append(decoded.label)
        if subset == "train":
            stored_labels.append(weak_lut[decoded.label].astype(decoded.label.dtype))
        else:
            stored_labels.append(decoded.label)
    if not kept.all():
        write_shard_block(group[f"{subset}/images"], task.start, pixels, 0)
    if kept.any():
        write_files(group[f"{subset}/image_files"], task.start, image_files)
    write_shard_block(group[f"{subset}/labels"], task.start, stored_labels, task.ignore_index)
    if subset == "train" and task.keep_audit:
        write_shard_block(group[AUDIT_LABELS], task.start, full_labels, task.ignore_index)
    return ShardResult(task.start, image_labels, pixel_counts, kept, crcs)


def check_masks_untagged(label_path: Path, counts: np.ndarray, novel: tuple[int, ...],
                         class_names: tuple[str, ...]) -> None:
    """A tagged image's mask holds base classes only: a class is either masked (base) or tagged (novel)."""
    masked = [class_names[c] for c in novel if counts[c] > 0]
    if masked:
        raise DataError(label_path, f"has pixels of {', '.join(masked)}, which the tag file names as novel; "
                                    "a class has either masks (base) or tags (novel), never both",
                        "remove the class from the tags, or set its pixels to the ignore value")


def _worker_setup(parent: int) -> None:
    """Initialise an ingest worker: leave Ctrl-C and SIGTERM to the parent, and never outlive it.

    The parent alone handles SIGINT and SIGTERM (it stops the pool and cleans up), so a Ctrl-C in a
    terminal, which reaches the whole process group, prints no worker tracebacks, nor does a SIGTERM
    sent to the group (systemd, ``kill -- -PGID``). A parent that is killed outright (SIGKILL) runs
    no cleanup, and spawned workers would otherwise wait for work forever.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    armed = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            armed = ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL) == 0  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before this worker was ready
        os._exit(1)
    if not armed:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()


INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _born_deaf_to_interrupts() -> Iterator[None]:
    """Start worker processes inside this block: they begin life ignoring SIGINT and SIGTERM.

    A spawned worker imports numpy and zarr before :func:`_worker_setup` runs, and a Ctrl-C sent to
    the process group in that second would print its KeyboardInterrupt traceback. An ignored signal
    stays ignored across exec (and Python then installs no handler of its own), so the parent
    ignores both while it starts workers. They are blocked meanwhile, so one that arrives is kept
    pending (Linux never discards a blocked signal) and reaches the parent's own handler at the end.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTS)
    handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in INTERRUPTS}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class WorkerPool:
    """A process pool (spawned, so no forked zarr threads) or, with one worker, plain calls."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor = (
            ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_worker_setup,
                                initargs=(os.getpid(),))
            if workers > 1 else None
        )

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._executor is not None:
            try:
                self._executor.shutdown(wait=True, cancel_futures=True)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM while the pool stops: finish stopping it
                # first, or the pool's semaphores leak and Python warns about them after our hint.
                self._executor.shutdown(wait=True, cancel_futures=True)
                raise

    def run(self, fn: Callable, jobs: Sequence, on_done: Callable[[object, object], None]) -> None:
        """Run ``fn(job)`` for every job; ``on_done(job, result)`` in the parent as each finishes."""
        if self._executor is None:
            for job in jobs:
                on_done(job, fn(job))
            return
        with _born_deaf_to_interrupts():  # submit starts the workers
            futures: dict[Future, object] = {self._executor.submit(fn, job): job for job in jobs}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    if future.exception() is not None:
                        raise future.exception()  # type: ignore[misc]
                    on_done(futures[future], future.result())
        except BaseException:
            # A failed job or Ctrl-C: drop the queued jobs and let the running ones finish, so no
            # worker still writes into the staging folder once the caller has removed it.
            for future in pending:
                future.cancel()
            wait(pending)
            raise


def scan(
    pool: WorkerPool, root: Path, samples: Sequence[Sample], progress: Progress
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Sizes (N, 2) of every image and (relative path, sha256) of every file.

    A file several samples share (an annotation JSON) is hashed once, here, not once per sample.
    """
    uses = Counter(rel for sample in samples for rel in sample.files())
    shared = frozenset(rel for rel, count in uses.items() if count > 1)
    shared_digests = [(rel, file_sha256(root / rel)) for rel in sorted(shared)]
    batches = [(start, tuple(samples[start : start + SCAN_BATCH])) for start in range(0, len(samples), SCAN_BATCH)]
    results: dict[int, tuple[list, list]] = {}

    def done(batch: object, result: object) -> None:
        start, members = batch  # type: ignore[misc]
        results[start] = result  # type: ignore[assignment]
        progress(len(members))

    pool.run(_ScanJob(root, shared), batches, done)
    sizes: list[tuple[int, int]] = []
    digests: list[tuple[str, str]] = list(shared_digests)
    for start in sorted(results):
        sizes.extend(results[start][0])
        digests.extend(results[start][1])
    return np.asarray(sizes, dtype=np.int32).reshape(-1, 2), digests


@dataclass(frozen=True)
class _ScanJob:
    root: Path
    skip: frozenset[str]

    def __call__(self, batch: tuple[int, Sequence[Sample]]) -> tuple[list, list]:
        return _scan_batch(self.root, batch[1], self.skip)


def ingest_subset(pool: WorkerPool, tasks: list[ShardTask], progress: Progress) -> list[ShardResult]:
    results: list[ShardResult] = []

    def done(task: object, result: object) -> None:
        results.append(result)  # type: ignore[arg-type]
        progress(len(task.samples))  # type: ignore[attr-defined]

    pool.run(_ingest_shard, tasks, done)
    return sorted(results, key=lambda r: r.start)


@dataclass(frozen=True)
class Ingested:
    """What the ingest wrote: the arrays (for the manifest) and the split's figures."""

    arrays: dict[str, ArraySpec]
    summary: SplitSummary


def ingest(raw: RawDataset, novel: tuple[int, ...], sizes: dict[str, np.ndarray], staging: Path, pool: WorkerPool,
           reporter: Reporter, *, keep_audit: bool, coverage: dict[str, str] | None = None) -> Ingested:
    """Create the split's arrays in ``staging`` and fill them, one worker per shard: train labels
    weak (novel pixels ignore), the other subsets' full, and the full train labels in the audit
    group with ``keep_audit``. ``coverage`` says per subset what its masks hold (default: full)."""
    coverage = coverage or {}
    base = tuple(c for c in range(raw.num_classes) if c not in novel)
    num_classes, ignore = raw.num_classes, raw.ignore_index
    label_dtype = str(label_dtype_for(num_classes))
    group = zarr.open_group(store=str(staging), mode="w", zarr_format=3)
    arrays: dict[str, ArraySpec] = {}
    layouts = {subset: plan_layout(subset, sizes[subset]) for subset in subsets_of(raw)}
    for subset, layout in layouts.items():
        specs = create_arrays(group, layout, num_classes=num_classes, label_dtype=label_dtype, ignore_index=ignore,
                              audit=subset == "train" and keep_audit)
        arrays.update({path: ArraySpec(shape=shape, dtype=dtype) for path, (shape, dtype) in specs.items()})
    subset_summaries: dict[str, SubsetSummary] = {}
    image_counts = np.zeros(num_classes, dtype=np.int64)
    val_pixels = np.zeros(num_classes, dtype=np.int64)
    for subset, layout in layouts.items():
        samples = raw.subsets[subset]
        tasks = [
            ShardTask(staging=staging, root=raw.root, layout=layout, start=r.start,
                      samples=tuple(samples[r.start:r.stop]), lut=raw.lut, ignore_index=ignore,
                      num_classes=num_classes, novel_classes=novel, expected_sizes=sizes[subset][r.start:r.stop],
                      keep_audit=keep_audit, coverage=coverage.get(subset, "full"), class_names=raw.class_names)
            for r in layout.shard_ranges()
        ]
        with reporter.task(f"ingesting {subset} images", len(samples)) as advance:
            results = ingest_subset(pool, tasks, advance)
        image_labels = np.concatenate([r.image_labels for r in results])
        pixel_counts = np.sum([r.pixel_counts for r in results], axis=0)
        group[f"{subset}/sizes"][...] = sizes[subset]
        group[f"{subset}/image_labels"][...] = image_labels
        group[f"{subset}/kept_as_file"][...] = np.concatenate([r.kept_as_file for r in results])
        group[f"{subset}/pixels_crc32"][...] = np.concatenate([r.pixels_crc32 for r in results])
        group[subset].attrs["names"] = [sample.name for sample in samples]
        source_ids = raw.image_ids.get("train" if subset == "holdout" else subset)
        if source_ids is not None:  # export --format coco gives predictions the annotation file's image ids
            group[subset].attrs[SOURCE_IMAGE_IDS] = [source_ids[sample.name] for sample in samples]
        total = int(pixel_counts.sum())
        subset_summaries[subset] = SubsetSummary(
            images=len(samples), canvas=layout.canvas, pixels=total,
            base_share=round(float(pixel_counts[list(base)].sum()) / total, 6),
            novel_share=round(float(pixel_counts[list(novel)].sum()) / total, 6),
            ignore_share=round(float(pixel_counts[-1]) / total, 6),
        )
        if subset == "train":
            image_counts = image_labels.sum(axis=0)
        elif subset == "val":
            val_pixels = pixel_counts[:num_classes]
    return Ingested(arrays, SplitSummary(subsets=subset_summaries, train_images_per_class=[int(v) for v in image_counts],
                                         val_pixels_per_class=[int(v) for v in val_pixels]))
