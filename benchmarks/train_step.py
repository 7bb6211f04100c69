"""Training step on CPU (tiny preset, or the paper's network): images/s, where the time goes, peak memory.

Splits one step into data loading (the time spent waiting for the training loop's DataLoader,
with ``--workers`` processes as ``simformer train`` has), the segmenter's forward, the criterion's
forward (matching and set losses; the pair losses' point sampling and distillation; the similarity
net itself), the losses' backward down to the networks' outputs, the similarity net's backward, the
segmenter's backward and the optimiser, and reports the share of the networks' own
forward+backward. Usage::

    python benchmarks/train_step.py --out BENCHMARKS.md [--steps 30] [--images 400] [--workers N] [--set KEY=VALUE]
    python benchmarks/train_step.py --preset paper --steps 3 --out BENCHMARKS.md   # ResNet-50, 512 crops
    python benchmarks/train_step.py --split runs/camvid/split.zarr --out BENCHMARKS.md  # a split of real images
    python benchmarks/train_step.py --preset paper --device cuda --steps 20 --out BENCHMARKS.md  # bf16 on a GPU
    python benchmarks/train_step.py --json [--channels-last] [--compile]  # ms a step, for trying a change

``--channels-last`` stores the segmenter's weights and the images channels-last; ``--compile``
runs the segmenter through ``torch.compile`` (its compile time is in ``warmup_s``).

On CUDA the step runs under bf16 autocast as ``simformer train`` does, every mark waits for the GPU
(so the parts add up to the step), and the peak is the GPU's allocated memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
    parser.add_argument("--split", type=Path, default=None,
                        help="train on this split's training images instead of a synthetic split of --images")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--section", default=None, help="BENCHMARKS.md section to write (default from preset/device)")
    parser.add_argument("--title", default=None, help="added to the section's heading, e.g. the data's name")
    parser.add_argument("--workers", type=int, default=None,
                        help="data-loading worker processes (default: simformer train's default)")
    parser.add_argument("--no-cache", action="store_true", help="read every sample from the split (no sample cache)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="KEY=VALUE training setting, as for simformer train --set")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON line (ms per step, images/s, threads) instead of the table")
    parser.add_argument("--channels-last", action="store_true", help="segmenter weights and images channels-last")
    parser.add_argument("--compile", action="store_true", help="run the segmenter through torch.compile")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    timers = {"wait": device.type == "cuda"}

    def now() -> float:  # a GPU's work is asynchronous: a mark waits for it
        if timers["wait"]:
            torch.cuda.synchronize()
        return time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        split_path = args.split or run_split(dataset="synthetic", out=Path(tmp) / "split.zarr",
                                             synthetic=SyntheticSettings(train_images=args.images, val_images=10)).path
        split = SplitArtifact(split_path)
        images = split.count("train")
        settings = resolve_settings(split, preset=args.preset, method="simformer", iters=args.steps, batch_size=None,
                                    seed=0, lr=None)
        settings = TrainSettings.model_validate(apply_overrides(settings.model_dump(), args.overrides))
        workers = default_workers(device.type) if args.workers is None else args.workers
        warmup = 3 if args.preset == "tiny" else 1
        dataset = WeakTrainingSet(split_path, augment_settings=settings.augment, seed=0,
                                  cache_bytes=0 if args.no_cache else SAMPLE_CACHE_BYTES // max(1, workers))
        began = time.perf_counter()
        preloaded = not args.no_cache and dataset.preload()  # what the first batch of a run does
        preload_seconds = time.perf_counter() - began
        partners = PartnerSampler(split.image_labels("train"), split.manifest.novel_classes, split.manifest.base_classes)
        plan = StepPlan(seed=0, num_images=split.count("train"), batch_size=settings.batch_size, pairs=True)
        # On a GPU the timed steps are followed by as many untimed ones (no mark waits for the GPU).
        untimed = args.steps if device.type == "cuda" else 0
        sampler = StepBatchSampler(plan, partners, start=0, stop=args.steps + warmup + untimed, rank=0, world_size=1,
                                   accumulation=1)
        batches = iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                                  pin_memory=device.type == "cuda"))
        torch.manual_seed(0)
        model = build_model(settings.model).to(device)
        layout = torch.channels_last if args.channels_last else torch.contiguous_format
        model = model.to(memory_format=layout)
        network = torch.compile(model) if args.compile else model
        criterion = build_criterion(settings.model, settings.loss, novel_classes=split.manifest.novel_classes).to(device)
        module = torch.nn.ModuleList([model, criterion])
        optimizer = build_optimizer(module, settings.optim)

        def optimise() -> None:  # the end of a step, as the training loop ends it
            if settings.optim.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(module.parameters(), settings.optim.grad_clip_norm)
            optimizer.step()
            clear_gradients(optimizer)
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
        criterion.pair_losses.register_forward_pre_hook(lambda *_: pair_marks.append(now()))
        criterion.pair_losses.register_forward_hook(lambda *_: pair_marks.append(now()))
        criterion.pair_losses.simnet.register_forward_pre_hook(lambda *_: net_marks.append(now()))
        criterion.pair_losses.simnet.register_forward_hook(lambda *_: net_marks.append(now()))
        began = now()
        for step in range(args.steps + warmup):
            if step == warmup:
                warmup_seconds = now() - began
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
            marks = [now()]
            batch = next(batches).to(device, non_blocking=True)
            targets = batch.targets
            marks.append(now())
            with autocast():
                outputs = network(normalize_images(batch.images).contiguous(memory_format=layout))
            marks.append(now())
            leaves, fresh, cut = _cut_at_outputs(outputs)
            pair_marks.clear()
            net_marks.clear()
            with autocast():
                losses = criterion(cut, targets, torch.Generator().manual_seed(step))
            end_forward = now()
            pair_seconds = pair_marks[1] - pair_marks[0]
            net_seconds = sum(end - begin for begin, end in zip(net_marks[::2], net_marks[1::2]))
            marks += [end_forward - pair_seconds, end_forward - net_seconds, end_forward]
            total_loss({k: v for k, v in losses.items() if k != "loss_sim"}).backward()
            marks.append(now())
            losses["loss_sim"].backward()
            marks.append(now())
            torch.autograd.backward(leaves, [torch.zeros_like(f) if f.grad is None else f.grad for f in fresh])
            marks.append(now())
            optimise()
            marks.append(now())
            if step >= warmup:
                for name, begin, end in zip(parts, marks, marks[1:]):
                    parts[name] += end - begin
        untimed_step = None
        if untimed:
            timers["wait"] = False
            torch.cuda.synchronize()
            began = time.perf_counter()
            for step in range(untimed):
                batch = next(batches).to(device, non_blocking=True)
                with autocast():
                    outputs = network(normalize_images(batch.images).contiguous(memory_format=layout))
                    losses = criterion(outputs, batch.targets, torch.Generator().manual_seed(step))
                total_loss(losses).backward()
                logged = {name: float(value.detach()) for name, value in losses.items()}  # as the loop logs them
                optimise()
            del logged
            torch.cuda.synchronize()
            untimed_step = (time.perf_counter() - began) / untimed
    total = sum(parts.values())
    per_step = total / args.steps
    if args.json:
        print(json.dumps({"step_ms": per_step * 1000, "images_per_s": settings.batch_size / per_step,
                          "threads": torch.get_num_threads(), "batch": settings.batch_size,
                          "warmup_s": warmup_seconds, "channels_last": args.channels_last,
                          "compile": args.compile}))
        return
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = (f"Peak GPU memory (allocated): **{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB** "
            f"on {torch.cuda.get_device_name(device)}, bf16 autocast {'on' if bf16 else 'off'}."
            if device.type == "cuda" else f"Peak memory (max RSS of the process): **{peak_mib:.0f} MiB**.")
    rows = [(name, f"{seconds / args.steps * 1000:.0f}", f"{seconds / total:.0%}") for name, seconds in parts.items()]
    segmenter = parts["segmenter forward"] + parts["segmenter backward"]
    networks = segmenter + parts["similarity net forward"] + parts["similarity net backward"]
    overrides = "".join(f" --set {item}" for item in args.overrides)
    where = "CPU" if device.type == "cpu" else "GPU"
    data = f"the {images} training images of the split {args.split}" if args.split else f"{images} synthetic images"
    lines = [
        f"## Training step ({args.preset} preset, {where}{', ' + args.title if args.title else ''})",
        "",
        f"Command: `python benchmarks/train_step.py{' --preset ' + args.preset if args.preset != 'tiny' else ''} "
        f"--steps {args.steps}" + (f" --split {args.split}" if args.split else f" --images {args.images}")
        + (f" --device {args.device}" if args.device != "cpu" else "")
        + (f" --title '{args.title}' --section {args.section}" if args.section else "")
        + f"{'' if args.workers is None else f' --workers {args.workers}'}{' --no-cache' if args.no_cache else ''}"
        + f"{' --channels-last' if args.channels_last else ''}{' --compile' if args.compile else ''}"
        f"{overrides}`  ",
        f"Machine: {machine_line()}, {torch.get_num_threads()} torch threads. Data: {data}. "
        f"Batch {settings.batch_size} "
        f"(4 pairs) of {settings.augment.crop}x{settings.augment.crop} crops, mean of {args.steps} steps after "
        f"{warmup} warm-up steps; mask losses "
        + ("over every pixel" if settings.loss.mask_points is None else f"on {settings.loss.mask_points} points per mask")
        + f"; {workers} data-loading worker process{'es' if workers != 1 else ''}"
        + ("; no sample cache." if args.no_cache else
           f"; sample cache on: the {images} images " + (f"fit, read once by shards in {preload_seconds:.2f} s before "
           "the first step (not in the table)." if preloaded else "do not all fit; kept as read.")),
        "",
        "| part of the step | ms | share |",
        "|---|---|---|",
        *(f"| {name} | {ms} | {share} |" for name, ms, share in rows),
        f"| **whole step** | **{per_step * 1000:.0f}** | 100% |",
        "",
        f"Images/s: **{settings.batch_size / per_step:.1f}**. Share of the step in the segmenter's own forward + "
        f"backward: **{segmenter / total:.0%}**; with the similarity net (a network of the method too, trained "
        f"beside the segmenter): **{networks / total:.0%}**. " + peak,
    ]
    if untimed_step is not None:
        lines += ["", f"Every mark above waits for the GPU, so no part overlaps another. The next {untimed} steps, "
                  f"untimed inside (as `simformer train` runs): **{untimed_step * 1000:.0f} ms** a step, "
                  f"**{settings.batch_size / untimed_step:.1f} images/s**."]
    section = args.section or ("train_step" if args.preset == "tiny" else f"train_step_{args.preset}")
    publish(lines, args.out, section + ("_cuda" if device.type == "cuda" and not args.section else ""))


if __name__ == "__main__":
    main()
