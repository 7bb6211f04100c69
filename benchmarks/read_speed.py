"""Reading training samples from a split artifact on CPU: one image + label at a time, a batch at once, or by shards.

Times ``SplitArtifact.image`` + ``label`` per index against ``read_many`` over batches of eight
(what the training data path does when the data does not fit its cache), filling the sample cache
by shards (``WeakTrainingSet.preload``, what it does when it fits), and the rest of making a
training sample (augmentation and targets). Two sets: the synthetic default's training images
(128x128 PNG) and a generated ADE20K-format folder (512x683 JPEG, ``split_ingest.make_ade_like``);
for each, the artifact's size against its source files. Usage::

    python benchmarks/read_speed.py --out BENCHMARKS.md [--images 400] [--ade-images 64] [--batches 40]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _tables import machine_line, publish  # noqa: E402
from split_ingest import folder_bytes, make_ade_like  # noqa: E402

from simformer_cli.artifacts.split import SplitArtifact  # noqa: E402
from simformer_cli.data.synthetic import generate_synthetic  # noqa: E402
from simformer_cli.settings.synthetic import SyntheticSettings  # noqa: E402
from simformer_cli.training.train_data import WeakTrainingSet  # noqa: E402
from simformer_cli.pipeline.split import run_split  # noqa: E402
from simformer_cli.training.resolve import resolve_settings  # noqa: E402

BATCH = 8


def time_reads(path: Path, batches: int) -> list[tuple[str, float]]:
    """(what, seconds per batch of eight) for each way of reading the training images of a split."""
    split = SplitArtifact(path)
    count = split.count("train")
    plan = [[(7 * (b * BATCH + k)) % count for k in range(BATCH)] for b in range(batches + 2)]
    split.read_many("train", plan[0], labels=True)  # warm-up: metadata, codecs
    started = time.perf_counter()
    for batch in plan[2:]:
        for index in batch:
            split.image("train", index)
            split.label("train", index)
    single = (time.perf_counter() - started) / batches
    started = time.perf_counter()
    for batch in plan[2:]:
        split.read_many("train", batch, labels=True)
    together = (time.perf_counter() - started) / batches
    settings = resolve_settings(split, preset="tiny", method="simformer", iters=1, batch_size=None, seed=0, lr=None)
    dataset = WeakTrainingSet(path, augment_settings=settings.augment, seed=0)
    dataset.__getitems__([(0, k, index) for k, index in enumerate(plan[1])])
    started = time.perf_counter()
    for step, batch in enumerate(plan[2:]):
        dataset.__getitems__([(step, k, index) for k, index in enumerate(batch)])
    whole = (time.perf_counter() - started) / batches
    cached = WeakTrainingSet(path, augment_settings=settings.augment, seed=0, cache_bytes=4 << 30)
    started = time.perf_counter()
    cached.preload()
    fill = time.perf_counter() - started
    started = time.perf_counter()
    for step, batch in enumerate(plan[2:]):
        cached.__getitems__([(step, k, index) for k, index in enumerate(batch)])
    from_cache = (time.perf_counter() - started) / batches
    return [
        ("image + label, one index at a time", single),
        ("image + label, the batch at once (`read_many`)", together),
        ("whole training samples (batch read, augmentation, targets)", whole),
        (f"every image + label read by shards into the cache (`preload`, {fill:.2f} s for {count})", fill / count * BATCH),
        ("whole training samples from the cache (augmentation, targets)", from_cache),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--images", type=int, default=400, help="synthetic training images")
    parser.add_argument("--ade-images", type=int, default=64, help="ADE20K-format training images")
    parser.add_argument("--batches", type=int, default=40, help="batches of eight timed per way of reading")
    args = parser.parse_args()
    sets = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        synthetic = SyntheticSettings(train_images=args.images, val_images=10)
        generate_synthetic(tmp_path / "syn-src", synthetic)
        path = run_split(dataset="synthetic", out=tmp_path / "syn.zarr", synthetic=synthetic).path
        sets.append((f"synthetic ({synthetic.image_size}x{synthetic.image_size} PNG)", tmp_path / "syn-src", path))
        ade_root = make_ade_like(tmp_path / "ade", args.ade_images)
        path = run_split(dataset="ade20k", root=ade_root, out=tmp_path / "ade.zarr").path
        sets.append(("ADE20K-format (512x683 JPEG q90)", ade_root, path))
        rows, sizes = [], []
        for name, source, path in sets:
            source_bytes, artifact_bytes = folder_bytes(source), folder_bytes(path)
            sizes.append(f"{name}: artifact {artifact_bytes / 2**20:.1f} MiB, source {source_bytes / 2**20:.1f} MiB, "
                         f"artifact/source {artifact_bytes / source_bytes:.2f}")
            rows += [(name, what, seconds) for what, seconds in time_reads(path, args.batches)]
    lines = [
        "## Reading training samples (CPU)",
        "",
        f"Command: `python benchmarks/read_speed.py --images {args.images} --ade-images {args.ade_images} "
        f"--batches {args.batches}`  ",
        f"Machine: {machine_line()}. Batches of {BATCH} training images from a split artifact (JPEG images "
        f"kept as their files and decoded on read, PNG as zstd pixels; labels zstd, one image per chunk, sharded), mean of "
        f"{args.batches} batches. Sizes: " + "; ".join(sizes) + ".",
        "",
        "| images | what | ms per batch | ms per image |",
        "|---|---|---|---|",
        *(f"| {name} | {what} | {seconds * 1000:.1f} | {seconds * 1000 / BATCH:.2f} |" for name, what, seconds in rows),
    ]
    publish(lines, args.out, "read_speed")


if __name__ == "__main__":
    main()
