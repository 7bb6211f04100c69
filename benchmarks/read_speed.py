"""Reading training samples from a split artifact on CPU: one image + label at a time, a batch at once, or by shards.

Times ``SplitArtifact.image`` + ``label`` per index against ``read_many`` over batches of eight
(what the training data path does when the data does not fit its cache), filling the sample cache
by shards (``WeakTrainingSet.preload``, what it does when it fits), and the rest of making a
training sample (augmentation and targets), on the synthetic default's training images. Usage::

    python benchmarks/read_speed.py --out BENCHMARKS.md [--images 400] [--batches 40]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _tables import machine_line, publish  # noqa: E402

from simformer_cli.artifacts.split import SplitArtifact  # noqa: E402
from simformer_cli.settings.synthetic import SyntheticSettings  # noqa: E402
from simformer_cli.training.train_data import WeakTrainingSet  # noqa: E402
from simformer_cli.pipeline.split import run_split  # noqa: E402
from simformer_cli.training.resolve import resolve_settings  # noqa: E402

BATCH = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--images", type=int, default=400, help="synthetic training images")
    parser.add_argument("--batches", type=int, default=40, help="batches of eight timed per way of reading")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = run_split(dataset="synthetic", out=Path(tmp) / "split.zarr",
                         synthetic=SyntheticSettings(train_images=args.images, val_images=10)).path
        split = SplitArtifact(path)
        batches = [[(7 * (b * BATCH + k)) % args.images for k in range(BATCH)] for b in range(args.batches + 2)]
        split.read_many("train", batches[0], labels=True)  # warm-up: metadata, codecs
        started = time.perf_counter()
        for batch in batches[2:]:
            for index in batch:
                split.image("train", index)
                split.label("train", index)
        single = (time.perf_counter() - started) / args.batches
        started = time.perf_counter()
        for batch in batches[2:]:
            split.read_many("train", batch, labels=True)
        together = (time.perf_counter() - started) / args.batches
        settings = resolve_settings(split, preset="tiny", method="simformer", iters=1, batch_size=None, seed=0, lr=None)
        dataset = WeakTrainingSet(path, augment_settings=settings.augment, seed=0)
        dataset.__getitems__([(0, k, index) for k, index in enumerate(batches[1])])
        started = time.perf_counter()
        for step, batch in enumerate(batches[2:]):
            dataset.__getitems__([(step, k, index) for k, index in enumerate(batch)])
        whole = (time.perf_counter() - started) / args.batches
        cached = WeakTrainingSet(path, augment_settings=settings.augment, seed=0, cache_bytes=1 << 30)
        started = time.perf_counter()
        cached.preload()
        fill = time.perf_counter() - started
        started = time.perf_counter()
        for step, batch in enumerate(batches[2:]):
            cached.__getitems__([(step, k, index) for k, index in enumerate(batch)])
        from_cache = (time.perf_counter() - started) / args.batches
    per_batch = fill / args.images * BATCH
    rows = [
        ("image + label, one index at a time", single),
        ("image + label, the batch at once (`read_many`)", together),
        ("whole training samples (batch read, augmentation, targets)", whole),
        (f"every image + label read by shards into the cache (`preload`, {fill:.2f} s for {args.images})", per_batch),
        ("whole training samples from the cache (augmentation, targets)", from_cache),
    ]
    lines = [
        "## Reading training samples (synthetic data, CPU)",
        "",
        f"Command: `python benchmarks/read_speed.py --images {args.images} --batches {args.batches}`  ",
        f"Machine: {machine_line()}. Batches of {BATCH} training images of 128x128 from a split artifact "
        f"(zstd, one image per chunk, sharded), mean of {args.batches} batches.",
        "",
        "| what | ms per batch | ms per image |",
        "|---|---|---|",
        *(f"| {name} | {seconds * 1000:.1f} | {seconds * 1000 / BATCH:.2f} |" for name, seconds in rows),
    ]
    publish(lines, args.out, "read_speed")


if __name__ == "__main__":
    main()
