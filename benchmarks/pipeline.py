"""The whole default pipeline (synthetic data, tiny preset) on this machine: wall time per stage,
in total, and peak memory. Usage::

    python benchmarks/pipeline.py --out BENCHMARKS.md [--workdir runs/syn]
    python benchmarks/pipeline.py --title CamVid --section pipeline_camvid --out BENCHMARKS.md -- \
        --dataset folder --root ../shared/data/camvid --novel-classes tree,car,pedestrian

Arguments after ``--`` go to ``simformer pipeline`` (another dataset, other settings).

``--workdir`` keeps the artifacts (an empty or new folder: a finished pipeline there would be
skipped, not timed), e.g. for ``benchmarks/loss_curve.py`` on its models.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _tables import machine_line, publish  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the artifacts here (a new or empty folder)")
    parser.add_argument("--title", default="synthetic data", help="the data's name in the heading")
    parser.add_argument("--section", default="pipeline", help="BENCHMARKS.md section to write")
    parser.add_argument("pipeline_args", nargs="*", help="after --: more options of simformer pipeline")
    args = parser.parse_args()
    if args.workdir is not None and args.workdir.exists() and any(args.workdir.iterdir()):
        raise SystemExit(f"--workdir {args.workdir}: not empty; a finished pipeline there would be skipped, not timed")
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        workdir = args.workdir or Path(tmp) / "syn"
        done = subprocess.run([sys.executable, "-m", "simformer_cli", "pipeline", "--workdir", str(workdir),
                               "--json", *args.pipeline_args], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"simformer pipeline failed ({done.returncode}):\n{done.stderr[-4000:]}")
        total = time.perf_counter() - began
    result = json.loads(done.stdout)
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    one, re = result["one_stage"], result["retrained"]
    device = "GPU" if "cuda" in args.pipeline_args else "CPU"
    lines = [
        f"## Whole default pipeline ({args.title}, tiny preset, {device})",
        "",
        "Command: `python benchmarks/pipeline.py"
        + (f" --title {shlex.quote(args.title)} --section {args.section}" if args.section != "pipeline" else "")
        + (f" -- {' '.join(args.pipeline_args)}" if args.pipeline_args else "")
        + f"` (runs `simformer pipeline --workdir TMP --json{''.join(' ' + a for a in args.pipeline_args)}`)  ",
        f"Machine: {machine_line()}.",
        "",
        "| stage | seconds |",
        "|---|---|",
        *(f"| {stage} | {seconds:.1f} |" for stage, seconds in result["seconds"].items()),
        f"| **total (process wall time, start-up included)** | **{total:.1f}** |",
        "",
        f"Peak memory (max RSS of the pipeline process): **{peak_mib:.0f} MiB**.",
        "",
        "| model | mIoU | base | novel | hIoU |",
        "|---|---|---|---|---|",
        f"| SimFormer one-stage | {one['miou']:.2f} | {one['base_miou']:.2f} | {one['novel_miou']:.2f} | {one['hiou']:.2f} |",
        f"| + pseudo-label retraining | {re['miou']:.2f} | {re['base_miou']:.2f} | {re['novel_miou']:.2f} | {re['hiou']:.2f} |",
        "",
        f"Pseudo labels on the training set: novel mIoU {result['pseudo_label_novel_miou']:.2f} against the full labels.",
    ]
    publish(lines, args.out, args.section)


if __name__ == "__main__":
    main()
