"""Training step on CPU (tiny preset, or the paper's network): images/s, where the time goes, peak memory.

Splits one step into data loading (the time spent waiting for the training loop's DataLoader,
with ``--workers`` processes as ``simformer train`` has), the segmenter's forward, the criterion's
forward (matching and set losses; the pair losses' point sampling and distillation; the similarity
net itself), the losses' backward down to the networks' outputs, the similarity net's backward, the
segmenter's backward and the optimiser, and reports the share of the networks' own
forward+backward. Usage::

    python benchmarks/train_step.py --out BENCHMARKS.md [--steps 30] [--images 400] [--workers N] [--set KEY=VALUE]
    python benchmarks/train_step.py --preset paper --steps 3 --out BENCHMARKS.md   # ResNet-50, 512 crops
"""

from __future__ import annotations

import argparse
import resource
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
from simformer_cli.model import build_criterion, build_model, normalize_images, total_loss  # noqa: E402
from simformer_cli.pipeline.split import run_split  # noqa: E402
from simformer_cli.settings.synthetic import SyntheticSettings  # noqa: E402
from simformer_cli.settings.training import TrainSettings  # noqa: E402
from simformer_cli.training.loop import SAMPLE_CACHE_BYTES, default_workers  # noqa: E402
from simformer_cli.training.optim import build_optimizer, clear_gradients  # noqa: E402
from simformer_cli.training.resolve import apply_overrides, resolve_settings  # noqa: E402
from simformer_cli.training.train_data import StepBatchSampler, StepPlan, WeakTrainingSet, collate  # noqa: E402


def _cut_at_outputs(outputs: dict) -> tuple[list[torch.Tensor], list[torch.Tensor], dict]:
    """The network's output tensors, the same as fresh leaves, and the outputs dict made of those
    leaves for the criterion: the losses' backward then stops at the leaves, and the network's
    backward can be timed apart."""
    leaves = [outputs["pred_logits"], outputs["pred_masks"], outputs["mask_features"]]
    for aux in outputs["aux_outputs"]:
        leaves += [aux["pred_logits"], aux["pred_masks"]]
    fresh = [leaf.detach().requires_grad_() for leaf in leaves]
    cut = {"pred_logits": fresh[0], "pred_masks": fresh[1], "mask_features": fresh[2],
           "aux_outputs": [{"pred_logits": fresh[3 + 2 * i], "pred_masks": fresh[4 + 2 * i]}
                           for i in range(len(outputs["aux_outputs"]))]}
    return leaves, fresh, cut


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--images", type=int, default=400, help="synthetic training images to sample from")
    parser.add_argument("--preset", choices=["tiny", "paper"], default="tiny")
    parser.add_argument("--workers", type=int, default=None,
                        help="data-loading worker processes (default: simformer train's default)")
    parser.add_argument("--no-cache", action="store_true", help="read every sample from the split (no sample cache)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="KEY=VALUE training setting, as for simformer train --set")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        split_path = run_split(dataset="synthetic", out=Path(tmp) / "split.zarr",
                               synthetic=SyntheticSettings(train_images=args.images, val_images=10)).path
        split = SplitArtifact(split_path)
        settings = resolve_settings(split, preset=args.preset, method="simformer", iters=args.steps, batch_size=None,
                                    seed=0, lr=None)
        settings = TrainSettings.model_validate(apply_overrides(settings.model_dump(), args.overrides))
        workers = default_workers("cpu") if args.workers is None else args.workers
        warmup = 3 if args.preset == "tiny" else 1
        dataset = WeakTrainingSet(split_path, augment_settings=settings.augment, seed=0,
                                  cache_bytes=0 if args.no_cache else SAMPLE_CACHE_BYTES // max(1, workers))
        began = time.perf_counter()
        preloaded = not args.no_cache and dataset.preload()  # what the first batch of a run does
        preload_seconds = time.perf_counter() - began
        partners = PartnerSampler(split.image_labels("train"), split.manifest.novel_classes, split.manifest.base_classes)
        plan = StepPlan(seed=0, num_images=split.count("train"), batch_size=settings.batch_size, pairs=True)
        sampler = StepBatchSampler(plan, partners, start=0, stop=args.steps + warmup, rank=0, world_size=1,
                                   accumulation=1)
        batches = iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers))
        torch.manual_seed(0)
        model = build_model(settings.model)
        criterion = build_criterion(settings.model, settings.loss, novel_classes=split.manifest.novel_classes)
        module = torch.nn.ModuleList([model, criterion])
        optimizer = build_optimizer(module, settings.optim)
        # Hooks time the pair losses (similarity net + distillation) and, inside them, the
        # similarity net's own calls (its base-loss forward and the teacher's pass). The backward
        # is run in three parts: the set losses and distillation (down to the networks' outputs),
        # the similarity net's own loss, then the segmenter from its outputs' gradients.
        parts = {"data (waiting for the loader)": 0.0, "segmenter forward": 0.0,
                 "matching + set losses, forward": 0.0, "pair sampling + distillation, forward": 0.0,
                 "similarity net forward": 0.0, "losses backward (to the outputs)": 0.0,
                 "similarity net backward": 0.0, "segmenter backward": 0.0, "optimiser": 0.0}
        pair_marks: list[float] = []
        net_marks: list[float] = []
        criterion.pair_losses.register_forward_pre_hook(lambda *_: pair_marks.append(time.perf_counter()))
        criterion.pair_losses.register_forward_hook(lambda *_: pair_marks.append(time.perf_counter()))
        criterion.pair_losses.simnet.register_forward_pre_hook(lambda *_: net_marks.append(time.perf_counter()))
        criterion.pair_losses.simnet.register_forward_hook(lambda *_: net_marks.append(time.perf_counter()))
        for step in range(args.steps + warmup):
            marks = [time.perf_counter()]
            batch = next(batches)
            marks.append(time.perf_counter())
            outputs = model(normalize_images(batch.images))
            marks.append(time.perf_counter())
            leaves, fresh, cut = _cut_at_outputs(outputs)
            pair_marks.clear()
            net_marks.clear()
            losses = criterion(cut, batch.targets, torch.Generator().manual_seed(step))
            end_forward = time.perf_counter()
            pair_seconds = pair_marks[1] - pair_marks[0]
            net_seconds = sum(end - begin for begin, end in zip(net_marks[::2], net_marks[1::2]))
            marks += [end_forward - pair_seconds, end_forward - net_seconds, end_forward]
            total_loss({k: v for k, v in losses.items() if k != "loss_sim"}).backward()
            marks.append(time.perf_counter())
            losses["loss_sim"].backward()
            marks.append(time.perf_counter())
            torch.autograd.backward(leaves, [torch.zeros_like(f) if f.grad is None else f.grad for f in fresh])
            marks.append(time.perf_counter())
            if settings.optim.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(module.parameters(), settings.optim.grad_clip_norm)
            optimizer.step()
            clear_gradients(optimizer)
            marks.append(time.perf_counter())
            if step >= warmup:
                for name, begin, end in zip(parts, marks, marks[1:]):
                    parts[name] += end - begin
    total = sum(parts.values())
    per_step = total / args.steps
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [(name, f"{seconds / args.steps * 1000:.0f}", f"{seconds / total:.0%}") for name, seconds in parts.items()]
    segmenter = parts["segmenter forward"] + parts["segmenter backward"]
    networks = segmenter + parts["similarity net forward"] + parts["similarity net backward"]
    overrides = "".join(f" --set {item}" for item in args.overrides)
    lines = [
        f"## Training step ({args.preset} preset, CPU)",
        "",
        f"Command: `python benchmarks/train_step.py{' --preset ' + args.preset if args.preset != 'tiny' else ''} "
        f"--steps {args.steps} --images {args.images}"
        f"{'' if args.workers is None else f' --workers {args.workers}'}{' --no-cache' if args.no_cache else ''}"
        f"{overrides}`  ",
        f"Machine: {machine_line()}, {torch.get_num_threads()} torch threads. Batch {settings.batch_size} "
        f"(4 pairs) of {settings.augment.crop}x{settings.augment.crop} crops, mean of {args.steps} steps after "
        f"{warmup} warm-up steps; mask losses "
        + ("over every pixel" if settings.loss.mask_points is None else f"on {settings.loss.mask_points} points per mask")
        + f"; {workers} data-loading worker process{'es' if workers != 1 else ''}"
        + ("; no sample cache." if args.no_cache else
           f"; sample cache on: the {args.images} images " + (f"fit, read once by shards in {preload_seconds:.2f} s before "
           "the first step (not in the table)." if preloaded else "do not all fit; kept as read.")),
        "",
        "| part of the step | ms | share |",
        "|---|---|---|",
        *(f"| {name} | {ms} | {share} |" for name, ms, share in rows),
        f"| **whole step** | **{per_step * 1000:.0f}** | 100% |",
        "",
        f"Images/s: **{settings.batch_size / per_step:.1f}**. Share of the step in the segmenter's own forward + "
        f"backward: **{segmenter / total:.0%}**; with the similarity net (a network of the method too, trained "
        f"beside the segmenter): **{networks / total:.0%}**. "
        f"Peak memory (max RSS of the process): **{peak_mib:.0f} MiB**.",
    ]
    publish(lines, args.out, "train_step" if args.preset == "tiny" else f"train_step_{args.preset}")


if __name__ == "__main__":
    main()
