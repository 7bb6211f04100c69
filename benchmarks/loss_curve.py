"""The loss curve of a trained model artifact, as a table of window means from its train_log.jsonl.

Usage::

    simformer pipeline --workdir runs/syn          # or any train/retrain run
    python benchmarks/loss_curve.py runs/syn/model.zarr --out BENCHMARKS.md [--window 50]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _tables import publish  # noqa: E402

from simformer_cli.artifacts.model import ModelManifest  # noqa: E402
from simformer_cli.artifacts.store import read_manifest  # noqa: E402

COLUMNS = ("loss", "loss_ce", "loss_focal", "loss_dice", "loss_comp", "loss_sim", "loss_distill", "sim_accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--window", type=int, default=50)
    args = parser.parse_args()
    manifest, _ = read_manifest(args.model, ModelManifest)
    records = [json.loads(line) for line in (args.model / "train_log.jsonl").read_text().splitlines() if line]
    columns = [c for c in COLUMNS if any(c in r for r in records)]
    lines = [
        f"## Loss curve ({manifest.stage}, {manifest.params.settings.preset} preset, "
        f"{manifest.summary.steps} steps, {manifest.summary.device})",
        "",
        f"Command: `python benchmarks/loss_curve.py MODEL --window {args.window}` on the model made by "
        "`simformer pipeline --workdir runs/syn`. Mean of each term over each window of steps; `loss` is the "
        "optimised total (all decoder layers); the other columns are the last layer's weighted terms; "
        "`sim_accuracy` (not optimised) is the similarity net's balanced accuracy on the step's base pixel "
        "pairs (0.5 = chance).",
        "",
        "| steps | " + " | ".join(columns) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for start in range(0, len(records), args.window):
        window = records[start : start + args.window]
        cells = []
        for column in columns:
            values = [r[column] for r in window if column in r]  # sim_accuracy: steps with both pair kinds
            cells.append(f"{sum(values) / len(values):.3f}" if values else "-")
        lines.append(f"| {start}-{start + len(window) - 1} | " + " | ".join(cells) + " |")
    publish(lines, args.out, f"loss_curve_{manifest.stage}")


if __name__ == "__main__":
    main()
