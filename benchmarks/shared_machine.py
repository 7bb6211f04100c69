"""Training on a shared machine: the step time of one training process alone and of two side by
side, each with every core (what a process takes when nobody says otherwise) or with its share.

Each process is ``benchmarks/train_step.py --json`` on the same split; the side-by-side ones start
together and are measured over the same steps. Usage::

    python benchmarks/shared_machine.py --out BENCHMARKS.md [--steps 10] [--split runs/camvid/split.zarr]

Run it on an otherwise quiet machine: it measures contention between its own processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _tables import machine_line, publish  # noqa: E402

from simformer_cli.devices import usable_cores  # noqa: E402

STEP = Path(__file__).with_name("train_step.py")


def run_side_by_side(processes: int, threads: int | None, split: Path, steps: int) -> list[dict]:
    """``processes`` step benchmarks at once, each with ``threads`` torch threads (None: PyTorch's
    default, every core)."""
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, str(STEP), "--json", "--split", str(split), "--steps", str(steps), "--workers", "0"]
    running = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    results = []
    for process in running:
        out, _ = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"a step benchmark failed (exit {process.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--images", type=int, default=200, help="synthetic training images, without --split")
    parser.add_argument("--split", type=Path, default=None, help="train on this split instead of a synthetic one")
    parser.add_argument("--section", default="shared_machine")
    parser.add_argument("--title", default=None, help="added to the heading, e.g. the data's name")
    args = parser.parse_args()
    cores = usable_cores()
    with tempfile.TemporaryDirectory() as tmp:
        split = args.split
        if split is None:
            from simformer_cli.pipeline.split import run_split
            from simformer_cli.settings.synthetic import SyntheticSettings

            split = run_split(dataset="synthetic", out=Path(tmp) / "split.zarr",
                              synthetic=SyntheticSettings(train_images=args.images, val_images=10)).path
        share = max(1, cores // 2)
        cases = [(1, None), (2, None), (2, share)]
        measured = [(processes, threads, run_side_by_side(processes, threads, split, args.steps))
                    for processes, threads in cases]
    alone = measured[0][2][0]["step_ms"]
    rows = []
    for processes, threads, results in measured:
        ms = [result["step_ms"] for result in results]
        images = sum(result["images_per_s"] for result in results)
        how = f"`--threads {threads}`" if threads is not None else "default: every core"
        rows.append(f"| {processes} | {how} ({results[0]['threads']}) | {' / '.join(f'{m:.0f}' for m in ms)} | "
                    f"{max(ms) / alone:.1f}x | {images:.1f} |")
    data = f"the training images of the split {args.split}" if args.split else f"{args.images} synthetic images"
    lines = [
        f"## Training on a shared machine (tiny preset, CPU{', ' + args.title if args.title else ''})",
        "",
        f"Command: `python benchmarks/shared_machine.py --steps {args.steps}"
        + (f" --split {args.split}" if args.split else f" --images {args.images}")
        + (f" --title '{args.title}' --section {args.section}" if args.section != "shared_machine" else "") + "`  ",
        f"Machine: {machine_line()}. Data: {data}. Each process is `benchmarks/train_step.py` (mean of "
        f"{args.steps} steps after 3 warm-up steps); side-by-side processes start together.",
        "",
        "| processes | torch threads (count) | ms per step, each process | slowest vs alone | images/s, all processes |",
        "|---|---|---|---|---|",
        *rows,
    ]
    publish(lines, args.out, args.section)


if __name__ == "__main__":
    main()
