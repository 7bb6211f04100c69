"""Split ingest speed: images/s, artifact size against the source files, random and shard read times.

Two datasets: the built-in synthetic default, and a generated ADE20K-format folder of JPEG images
of ADE-like size (512x683). Usage::

    python benchmarks/split_ingest.py --out BENCHMARKS.md [--ade-images 500] [--workers 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _tables import machine_line, write_section  # noqa: E402

from simformer_cli.artifacts.split import SplitArtifact  # noqa: E402
from simformer_cli.data.synthetic import generate_synthetic  # noqa: E402
from simformer_cli.settings.synthetic import SyntheticSettings  # noqa: E402
from simformer_cli.pipeline.split import run_split  # noqa: E402


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def make_ade_like(root: Path, count: int, seed: int = 0) -> Path:
    """ADEChallengeData2016 release layout: smooth textured JPEGs and 0..150 labels, 512x683."""
    rng = np.random.default_rng(seed)
    base = root / "ADEChallengeData2016"
    for subset, n in (("training", count), ("validation", max(count // 10, 2))):
        (base / "images" / subset).mkdir(parents=True, exist_ok=True)
        (base / "annotations" / subset).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = (512, 683) if i % 2 == 0 else (683, 512)
            coarse = rng.integers(0, 256, (h // 32 + 1, w // 32 + 1, 3), dtype=np.uint8)
            image = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
            image = np.clip(image.astype(np.int16) + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
            cells = rng.integers(0, 151, (h // 64 + 1, w // 64 + 1), dtype=np.uint8)
            label = cv2.resize(cells, (w, h), interpolation=cv2.INTER_NEAREST)
            name = f"ADE_{subset[:5]}_{i:08d}"
            cv2.imwrite(str(base / "images" / subset / f"{name}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            cv2.imwrite(str(base / "annotations" / subset / f"{name}.png"), label)
    return root


def random_read_ms(path: Path, subset: str = "train", trials: int = 100) -> float:
    """Median time of one image + label read at a random index (what infer, eval and viz do)."""
    split = SplitArtifact(path)
    rng = np.random.default_rng(0)
    times = []
    for i in rng.integers(0, split.count(subset), trials):
        start = time.perf_counter()
        split.image(subset, int(i))
        split.label(subset, int(i))
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000


def shard_read_ms(path: Path, subset: str = "train") -> float:
    """Time per image of reading every image + label shard by shard (what training's cache fill does)."""
    split = SplitArtifact(path)
    count, step = split.count(subset), split.images_per_shard(subset)
    start = time.perf_counter()
    for first in range(0, count, step):
        split.read_range(subset, first, min(first + step, count), labels=True)
    return (time.perf_counter() - start) / count * 1000


def measure(name: str, run, source_bytes: int, images: int) -> list[str]:  # noqa: ANN001
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    size = folder_bytes(result.path)
    return [name, str(images), f"{seconds:.1f}", f"{images / seconds:.0f}", f"{source_bytes / 2**20:.1f}",
            f"{size / 2**20:.1f}", f"{size / source_bytes:.2f}", f"{random_read_ms(result.path):.1f}",
            f"{shard_read_ms(result.path):.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--ade-images", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        settings = SyntheticSettings()
        generate_synthetic(tmp_path / "syn-src", settings)
        syn_images = settings.train_images + settings.val_images
        rows.append(measure(
            f"synthetic default ({settings.image_size}x{settings.image_size} PNG, incl. generation)",
            lambda: run_split(dataset="synthetic", out=tmp_path / "syn.zarr", workers=args.workers),
            folder_bytes(tmp_path / "syn-src"), syn_images))
        ade_root = make_ade_like(tmp_path / "ade", args.ade_images)
        ade_images = sum(1 for _ in ade_root.rglob("*.jpg"))
        rows.append(measure(
            "ADE20K-format folder (512x683 JPEG q90)",
            lambda: run_split(dataset="ade20k", root=ade_root, out=tmp_path / "ade.zarr", workers=args.workers),
            folder_bytes(ade_root), ade_images))
        shutil.rmtree(ade_root)
    header = ["dataset", "images", "seconds", "images/s", "source MiB", "artifact MiB", "artifact/source",
              "random image+label read (ms, median)", "shard reads (ms per image+label)"]
    lines = [
        "## Split ingest",
        "",
        f"Command: `python benchmarks/split_ingest.py --ade-images {args.ade_images} --workers {args.workers}`  ",
        f"Machine: {machine_line()}. Timings include hashing every file, decoding, validation and writing. "
        "Reads are of the training images, decoded: at random indices, and every one shard by shard.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    write_section(args.out, "split_ingest", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
