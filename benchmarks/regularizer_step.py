"""What the DFR regularizer adds to a training step (tiny preset, CPU): paired, interleaved runs.

Two (or three) copies of the same tiny model, initialised alike, train side by side on the same
batches: one with the preset's objective, the others with ``--regularizer dfr`` (the feature kernel,
and with ``--similarity`` the similarity net's kernel too). Each step runs every variant once, in an
order that rotates from step to step, so a load on the machine that comes and goes hits them alike;
the overhead is the median over steps of each step's time ratio, which a loaded machine shifts far
less than the absolute times. Data loading is left out (every variant reads the same batch).
Before the timed steps, on the first batches and the initial weights, it also reports how large the
regularizer's gradient is beside the other terms' (the segmenter's parameters, norm of each), the
figure ``loss.dfr_weight`` was set from.
Usage::

    OMP_NUM_THREADS=1 python benchmarks/regularizer_step.py --out BENCHMARKS.md [--steps 40] [--similarity]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from _tables import machine_line, publish  # noqa: E402

from simformer_cli.artifacts.split import SplitArtifact  # noqa: E402
from simformer_cli.data.pairs import PartnerSampler  # noqa: E402
from simformer_cli.pipeline.split import run_split  # noqa: E402
from simformer_cli.settings.synthetic import SyntheticSettings  # noqa: E402
from simformer_cli.settings.training import TrainSettings  # noqa: E402
from simformer_cli.training.loop import TrainingModule, build_training_module  # noqa: E402
from simformer_cli.model import total_loss  # noqa: E402
from simformer_cli.training.optim import build_optimizer, clear_gradients  # noqa: E402
from simformer_cli.training.resolve import apply_overrides, resolve_settings  # noqa: E402
from simformer_cli.training.train_data import StepBatchSampler, StepPlan, WeakTrainingSet, collate  # noqa: E402


def variants(base: TrainSettings, similarity: bool) -> dict[str, TrainSettings]:
    """The preset's settings, and the same with the regularizer on (each deep kernel asked for; the
    similarity net's at the default points and at a quarter of them, a sixteenth of the pairs)."""
    chosen = {"preset (no regularizer)": base}
    extra = {"--regularizer dfr, features kernel": ["loss.dfr_deep_kernel=features"]}
    if similarity:
        points = base.loss.dfr_points // 4
        extra["--regularizer dfr, similarity kernel"] = ["loss.dfr_deep_kernel=similarity"]
        extra[f"--regularizer dfr, similarity kernel, {points} points"] = [
            "loss.dfr_deep_kernel=similarity", f"loss.dfr_points={points}"]
    for name, overrides in extra.items():
        chosen[name] = TrainSettings.model_validate(
            apply_overrides(base.model_dump(), ["loss.regularizer=dfr", *overrides]))
    return chosen


def timed_step(module: TrainingModule, optimizer: torch.optim.Optimizer, batch, step: int) -> float:  # noqa: ANN001
    """One whole training step (forward, criterion, backward, optimiser) -> seconds."""
    began = time.perf_counter()
    losses = module(batch.images, batch.targets, torch.Generator().manual_seed(step))
    total_loss(losses).backward()
    optimizer.step()
    clear_gradients(optimizer)
    return time.perf_counter() - began


def gradient_share(module: TrainingModule, batches: list) -> list[float]:  # noqa: ANN001
    """Per batch, |grad of loss_dfr| / |grad of every other term| over the segmenter's parameters."""
    parameters = [p for p in module.model.parameters() if p.requires_grad]

    def norm(loss: torch.Tensor) -> float:
        grads = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
        return float(torch.sqrt(sum(g.square().sum() for g in grads if g is not None)))

    shares = []
    for step, batch in enumerate(batches):
        losses = module(batch.images, batch.targets, torch.Generator().manual_seed(step))
        rest = total_loss({name: value for name, value in losses.items() if name != "loss_dfr"})
        shares.append(norm(losses["loss_dfr"]) / norm(rest))
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--images", type=int, default=200, help="synthetic training images to sample from")
    parser.add_argument("--similarity", action="store_true", help="also time the similarity net's kernel")
    args = parser.parse_args()
    warmup = 3
    with tempfile.TemporaryDirectory() as tmp:
        split_path = run_split(dataset="synthetic", out=Path(tmp) / "split.zarr",
                               synthetic=SyntheticSettings(train_images=args.images, val_images=10)).path
        split = SplitArtifact(split_path)
        base = resolve_settings(split, preset="tiny", method="simformer", iters=args.steps, batch_size=None, seed=0,
                                lr=None)
        runs = {}
        for name, settings in variants(base, args.similarity).items():
            torch.manual_seed(0)  # every variant starts from the same weights
            module = build_training_module(settings, split.manifest.novel_classes)
            module.train()
            runs[name] = (module, build_optimizer(module, settings.optim))
        dataset = WeakTrainingSet(split_path, augment_settings=base.augment, seed=0, cache_bytes=1 << 30)
        dataset.preload()
        partners = PartnerSampler(split.image_labels("train"), split.manifest.novel_classes, split.manifest.base_classes)
        plan = StepPlan(seed=0, num_images=split.count("train"), batch_size=base.batch_size, pairs=True)
        sampler = StepBatchSampler(plan, partners, start=0, stop=args.steps + warmup, rank=0, world_size=1,
                                   accumulation=1)
        batches = list(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=0))
        names = list(runs)
        weight = runs[names[1]][0].criterion.settings.dfr_weight
        torch.manual_seed(0)
        probe = build_training_module(variants(base, False)[names[1]], split.manifest.novel_classes)
        probe.train()
        shares = gradient_share(probe, batches[:warmup])
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for step, batch in enumerate(batches):
            shift = step % len(names)
            for name in names[shift:] + names[:shift]:  # the order rotates, so no variant always runs first
                module, optimizer = runs[name]
                elapsed = timed_step(module, optimizer, batch, step)
                if step >= warmup:
                    seconds[name].append(elapsed)
    reference = seconds[names[0]]
    rows = []
    for name in names:
        ratios = [mine / theirs for mine, theirs in zip(seconds[name], reference)]
        overhead = statistics.median(ratios) - 1
        low, high = sorted(ratios)[len(ratios) // 4] - 1, sorted(ratios)[(3 * len(ratios)) // 4] - 1
        rows.append(f"| {name} | {statistics.median(seconds[name]) * 1000:.0f} | "
                    + ("(reference)" if name == names[0] else f"{overhead:+.1%} ({low:+.1%} to {high:+.1%})") + " |")
    dfr = base.loss.model_copy(update={"regularizer": "dfr"})
    lines = [
        "## Training step with the DFR regularizer (tiny preset, CPU)",
        "",
        f"Command: `OMP_NUM_THREADS=1 python benchmarks/regularizer_step.py --steps {args.steps} "
        f"--images {args.images}{' --similarity' if args.similarity else ''}`  ",
        f"Machine: {machine_line()}, {torch.get_num_threads()} torch threads; the machine was shared with other "
        "work, so the absolute times are a loaded machine's, and the overhead is measured as a ratio of interleaved "
        f"steps. Batch {base.batch_size} (4 pairs) of {base.augment.crop}x{base.augment.crop} crops; each variant "
        f"runs every step on the same batch, in an order that rotates; {args.steps} steps after {warmup} warm-up "
        f"steps; data loading not counted. Regularizer defaults: {dfr.dfr_points} points per image "
        f"({dfr.dfr_points ** 2} pairs), pixels {dfr.dfr_pixels}, sigma rgb {dfr.dfr_sigma_rgb:g}, "
        f"sigma xy {dfr.dfr_sigma_xy:g} px, sigma feature {dfr.dfr_sigma_feature:g}.",
        "",
        "| variant | median step, ms | extra time per step: median of the paired ratios (quartiles) |",
        "|---|---|---|",
        *rows,
        "",
        "Target (issue 23): at most +20% per step with the regularizer on.",
        "",
        f"Gradient of the regularizer beside the other terms (feature kernel, weight {weight:g}, initial weights, "
        f"first {warmup} batches; norms over the segmenter's parameters): "
        + ", ".join(f"{share:.1%}" for share in shares) + ".",
    ]
    publish(lines, args.out, "regularizer_step")


if __name__ == "__main__":
    main()
