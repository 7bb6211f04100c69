"""Confusion-matrix speed: ConfusionMatrix.update against a plain masked np.bincount.

The reference is what an evaluator would write by hand, ``np.bincount(K * gt + pred)`` over the
pixels whose ground truth is not ignore. Both run over the same blocky ADE20K-like label maps
(512x683, 150 classes, uint8, some ignore) in the same process, alternating, best of a few rounds,
so machine noise hits both alike. ConfusionMatrix does more (it checks ground-truth values,
counts misses and ignored pixels) and should still be at least 0.9x as fast. Usage::

    python benchmarks/eval_speed.py --out BENCHMARKS.md [--images 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _tables import machine_line, write_section  # noqa: E402

from simformer_cli.evaluation import ConfusionMatrix  # noqa: E402

HEIGHT, WIDTH = 512, 683
IGNORE = 255


def blocks(rng: np.random.Generator, cell: int, high: int) -> np.ndarray:
    """Piecewise-constant map: random values on a coarse grid, enlarged without interpolation."""
    coarse = rng.integers(0, high, (HEIGHT // cell + 1, WIDTH // cell + 1), dtype=np.uint8)
    return cv2.resize(coarse, (WIDTH, HEIGHT), interpolation=cv2.INTER_NEAREST)


def make_pairs(count: int, classes: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(prediction, ground truth) pairs: regions like real label maps, ~10% ignore in the ground
    truth, and predictions that agree on most regions and get others wrong."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        gt = blocks(rng, 40, classes)
        gt[blocks(rng, 96, 10) == 0] = IGNORE
        pred = np.where(gt == IGNORE, 0, gt).astype(np.uint8)
        wrong = blocks(rng, 28, 4) == 0
        pred[wrong] = blocks(rng, 20, classes)[wrong]
        pairs.append((pred, gt))
    return pairs


def run_ours(pairs: list[tuple[np.ndarray, np.ndarray]], classes: int) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    matrix = ConfusionMatrix(classes, IGNORE)
    for pred, gt in pairs:
        matrix.update(pred, gt)
    return time.perf_counter() - start, matrix.matrix


def run_bincount(pairs: list[tuple[np.ndarray, np.ndarray]], classes: int) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    total = np.zeros(classes * classes, dtype=np.int64)
    for pred, gt in pairs:
        keep = gt != IGNORE
        total += np.bincount(classes * gt[keep].astype(np.int64) + pred[keep], minlength=classes * classes)
    return time.perf_counter() - start, total.reshape(classes, classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best time of each method counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the table into this BENCHMARKS.md section")
    args = parser.parse_args()

    start = time.perf_counter()
    pairs = make_pairs(args.images, args.classes, args.seed)
    print(f"generated {args.images} pairs in {time.perf_counter() - start:.1f} s", file=sys.stderr)

    ours, reference = [], []
    for _ in range(args.repeats):
        seconds, ours_matrix = run_ours(pairs, args.classes)
        ours.append(seconds)
        seconds, reference_matrix = run_bincount(pairs, args.classes)
        reference.append(seconds)
        if not np.array_equal(ours_matrix, reference_matrix):
            raise SystemExit("ConfusionMatrix and the bincount reference disagree")

    best_ours, best_reference = min(ours), min(reference)
    pixels = args.images * HEIGHT * WIDTH
    table = "\n".join(
        [
            "| images | pixels | ConfusionMatrix s | masked bincount s | speed vs bincount | Mpixel/s (ours) |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {args.images} | {pixels:,} | {best_ours:.3f} | {best_reference:.3f} | "
            f"{best_reference / best_ours:.2f}x | {pixels / best_ours / 1e6:.0f} |",
        ]
    )
    print(table)
    if args.out:
        command = "python benchmarks/eval_speed.py " + " ".join(sys.argv[1:])
        body = (
            "## Eval speed\n\n"
            f"`{command.strip()}`\n\n"
            f"{args.images} uint8 label-map pairs of {HEIGHT}x{WIDTH}, {args.classes} classes, ~10% ignore "
            f"in the ground truth; best of {args.repeats} alternating rounds. Reference: "
            f"`np.bincount({args.classes} * gt[keep] + pred[keep])` with `keep = gt != 255`; "
            "both give the same matrix (checked). Speed > 1 means ConfusionMatrix is faster.\n\n"
            f"{table}\n\nMachine: {machine_line()}\n"
        )
        write_section(args.out, "eval_speed", body)
        print(f"wrote section eval_speed of {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
