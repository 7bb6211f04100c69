"""Tiny-preset training step on CPU: images/s, where the time goes, and peak memory.

Splits one step into data loading (read, augment, build targets), the model's forward, the
criterion's forward (matching and losses), backward and the optimiser, and reports the share of
the model's own forward+backward. Usage::

    python benchmarks/train_step.py --out BENCHMARKS.md [--steps 30] [--images 400]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _tables import machine_line, write_section  # noqa: E402

from simformer_cli.data.pairs import PartnerSampler  # noqa: E402
from simformer_cli.data.split_store import SplitArtifact  # noqa: E402
from simformer_cli.data.synthetic import SyntheticSettings  # noqa: E402
from simformer_cli.data.train_data import StepPlan, WeakTrainingSet, collate  # noqa: E402
from simformer_cli.model import build_criterion, build_model, normalize_images, total_loss  # noqa: E402
from simformer_cli.pipeline.split import run_split  # noqa: E402
from simformer_cli.pipeline.train import resolve_settings  # noqa: E402
from simformer_cli.training.optim import build_optimizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--images", type=int, default=400, help="synthetic training images to sample from")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        split_path = run_split(dataset="synthetic", out=Path(tmp) / "split.zarr",
                               synthetic=SyntheticSettings(train_images=args.images, val_images=10)).path
        split = SplitArtifact(split_path)
        settings = resolve_settings(split, preset="tiny", method="simformer", iters=args.steps, batch_size=None,
                                    seed=0, lr=None)
        dataset = WeakTrainingSet(split_path, augment_settings=settings.augment, seed=0)
        partners = PartnerSampler(split.image_labels("train"), split.manifest.novel_classes, split.manifest.base_classes)
        plan = StepPlan(seed=0, num_images=split.count("train"), batch_size=settings.batch_size, pairs=True)
        torch.manual_seed(0)
        model = build_model(settings.model)
        criterion = build_criterion(settings.model, settings.loss, novel_classes=split.manifest.novel_classes)
        optimizer = build_optimizer(torch.nn.ModuleList([model, criterion]), settings.optim)
        parts = {"data": 0.0, "model forward": 0.0, "criterion forward": 0.0, "backward": 0.0, "optimiser": 0.0}
        warmup = 3
        for step in range(args.steps + warmup):
            marks = [time.perf_counter()]
            batch = collate([dataset[key] for key in plan.keys(step, partners)])
            marks.append(time.perf_counter())
            outputs = model(normalize_images(batch.images))
            marks.append(time.perf_counter())
            losses = criterion(outputs, batch.targets, torch.Generator().manual_seed(step))
            marks.append(time.perf_counter())
            total_loss(losses).backward()
            marks.append(time.perf_counter())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            marks.append(time.perf_counter())
            if step >= warmup:
                for name, begin, end in zip(parts, marks, marks[1:]):
                    parts[name] += end - begin
    total = sum(parts.values())
    per_step = total / args.steps
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [(name, f"{seconds / args.steps * 1000:.0f}", f"{seconds / total:.0%}") for name, seconds in parts.items()]
    model_share = (parts["model forward"] + parts["backward"]) / total
    lines = [
        "## Training step (tiny preset, CPU)",
        "",
        f"Command: `python benchmarks/train_step.py --steps {args.steps} --images {args.images}`  ",
        f"Machine: {machine_line()}, {torch.get_num_threads()} torch threads. Batch {settings.batch_size} "
        f"(4 pairs) of {settings.augment.crop}x{settings.augment.crop} crops, mean of {args.steps} steps after "
        f"{warmup} warm-up steps.",
        "",
        "| part of the step | ms | share |",
        "|---|---|---|",
        *(f"| {name} | {ms} | {share} |" for name, ms, share in rows),
        f"| **whole step** | **{per_step * 1000:.0f}** | 100% |",
        "",
        f"Images/s: **{settings.batch_size / per_step:.1f}**. Share of the step in the model's own forward + "
        f"backward (backward includes the losses' backward): **{model_share:.0%}**. "
        f"Peak memory (max RSS of the process): **{peak_mib:.0f} MiB**.",
    ]
    print("\n".join(lines))
    if args.out is not None:
        write_section(args.out, "train_step", "\n".join(lines))


if __name__ == "__main__":
    main()
