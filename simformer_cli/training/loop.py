"""The training loop shared by ``train`` and ``retrain``.

Per step: the global batch is cut into micro-batches (processes x accumulation); each runs the
model and the SimFormer criterion (or the CAM baseline's objective) under autocast (bf16 on CUDA) and back-propagates; then gradients
are clipped, the poly learning rate is set and AdamW steps. Every random choice derives from the
seed and the step (data, augmentation, point sampling) or is checkpointed (torch's RNG), so a run
resumed from a checkpoint ends with the same weights as one never interrupted (on CPU).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from simformer_cli.artifacts.model import load_weights_into
from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.cam.losses import CamObjective
from simformer_cli.cam.network import build_cam_model
from simformer_cli.data.pairs import PartnerSampler
from simformer_cli.devices import Runtime, sum_over_processes
from simformer_cli.model import build_criterion, build_model, load_backbone_weights, normalize_images, total_loss
from simformer_cli.model.criterion import SetCriterion, count_masks
from simformer_cli.model.maskformer import MaskFormer
from simformer_cli.model.targets import ImageTargets
from simformer_cli.progress import Reporter
from simformer_cli.settings.training import TrainSettings, accumulation_steps
from simformer_cli.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from simformer_cli.training.optim import build_optimizer, clear_gradients, poly_factor, set_learning_rate
from simformer_cli.training.train_data import LabelReader, StepBatchSampler, StepPlan, WeakTrainingSet, collate

LOG_FILE = "train_log.jsonl"
CHECKPOINTS = "checkpoints"
#: Decoded training images and their labels kept in memory by the data path, shared among the
#: loader's worker processes: a small dataset is read once, by shards, before the first step
#: (WeakTrainingSet.preload); a large one fills it as it is read and reads the rest each time.
SAMPLE_CACHE_BYTES = 1 << 30


def default_workers(device_type: str) -> int:
    """Data-loading worker processes of a training process when --workers is not given.

    None on CPU: the training threads already use every core there, and a worker competes with
    them (BENCHMARKS.md, "Training step"). On CUDA, this process's share of the cores less one for
    itself, at most 4; under torchrun the LOCAL_WORLD_SIZE processes of a machine share the cores.
    """
    if device_type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(4, cores - 1))


class TrainingModule(nn.Module):
    """Model and criterion as one module, so one optimiser, one state dict and one DDP wrapper
    cover the segmenter and the similarity net that lives in the criterion."""

    def __init__(self, model: MaskFormer, criterion: SetCriterion) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, images: Tensor, targets: list[ImageTargets], generator: torch.Generator,
                num_masks: float | None = None) -> dict[str, Tensor]:
        return self.criterion(self.model(normalize_images(images)), targets, generator, num_masks, images=images)


def build_training_module(settings: TrainSettings, novel_classes: list[int]) -> TrainingModule | CamObjective:
    """What the loop optimises: MaskFormer + SimFormer criterion, or (method cam) the CAM network +
    its objective. Either way ``forward(images, targets, generator)`` returns the weighted loss terms
    and ``.model`` holds the weights the artifact keeps."""
    if settings.method == "cam":
        assert settings.cam is not None  # TrainSettings checks it
        return CamObjective(build_cam_model(settings.model, settings.cam), settings.cam, settings.model.num_classes)
    model = build_model(settings.model)
    return TrainingModule(model, build_criterion(settings.model, settings.loss, novel_classes=novel_classes))


@dataclass(frozen=True)
class LoopResult:
    model_state: dict[str, Tensor]
    steps: int
    resumed_from: int
    seconds: float
    images_per_second: float
    final_losses: dict[str, float]


def _step_generator(seed: int, step: int, rank: int, micro: int) -> torch.Generator:
    # Reduced modulo 2**63: torch seeds are 64-bit; the value is unchanged for every small seed.
    return torch.Generator().manual_seed((((seed * 1_000_003 + step) * 1_009 + rank) * 101 + micro) % 2**63)


def _trim_log(path: Path, start: int) -> None:
    """Drop log lines of steps that a resumed run will redo."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] < start]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)  # a kill while trimming must not lose the log


def train_loop(
    *,
    settings: TrainSettings,
    split_path: Path,
    work_dir: Path,
    runtime: Runtime,
    resume: bool,
    checkpoint_every: int,
    workers: int,
    reporter: Reporter,
    label_reader: LabelReader | None = None,
    crop_label_reader: LabelReader | None = None,
    backbone_weights: Path | None = None,
    init_weights: Path | None = None,
) -> LoopResult:
    split = SplitArtifact(split_path)
    manifest = split.manifest
    torch.manual_seed(settings.seed)
    module = build_training_module(settings, manifest.novel_classes)
    if backbone_weights is not None:
        load_backbone_weights(module.model.backbone, backbone_weights)
    if init_weights is not None:  # retrain --init-from: start from a trained network (checked by the caller too)
        load_weights_into(module.model, init_weights, artifact=init_weights.parent)
    module = module.to(runtime.device)
    optimizer = build_optimizer(module, settings.optim)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    start = 0
    checkpoint = latest_checkpoint(work_dir / CHECKPOINTS) if resume else None
    if checkpoint is not None:
        start, _ = load_checkpoint(checkpoint, module=module, optimizer=optimizer)
        reporter.info(f"resuming from step {start} ({checkpoint.name})")
    if runtime.is_main and checkpoint is not None:
        _trim_log(work_dir / LOG_FILE, start)
    elif runtime.is_main:
        (work_dir / LOG_FILE).unlink(missing_ok=True)
    wrapped: nn.Module = module
    if runtime.world_size > 1:
        wrapped = DistributedDataParallel(module, find_unused_parameters=True)

    accumulation = accumulation_steps(settings.batch_size, runtime.world_size)  # keep micro-batches small
    pairs = settings.loss.needs_pairs
    partners = PartnerSampler(split.image_labels("train"), manifest.novel_classes, manifest.base_classes) if pairs else None
    plan = StepPlan(seed=settings.seed, num_images=split.count("train"), batch_size=settings.batch_size, pairs=pairs)
    sampler = StepBatchSampler(plan, partners, start=start, stop=settings.iters, rank=runtime.rank,
                               world_size=runtime.world_size, accumulation=accumulation)
    dataset = WeakTrainingSet(split_path, augment_settings=settings.augment, seed=settings.seed,
                              label_reader=label_reader, maskless_novel=settings.method in ("simformer", "cam"),
                              crop_label_reader=crop_label_reader, cache_bytes=SAMPLE_CACHE_BYTES // max(1, workers))
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                        persistent_workers=False, pin_memory=runtime.device.type == "cuda")

    module.train()
    began = time.perf_counter()
    losses_mean: dict[str, float] = {}
    batches = iter(loader)
    with reporter.task("training", settings.iters - start) as advance:
        for step in range(start, settings.iters):
            set_learning_rate(optimizer, base_lrs, poly_factor(step, settings.iters, settings.optim.poly_power))
            sums: dict[str, float] = {}
            diagnostics: dict[str, list[float]] = {}
            micro_batches = [next(batches) for _ in range(accumulation)]
            extra = {}
            if isinstance(module, TrainingModule):  # focal/dice normalised by the whole batch's mask count
                masks = sum_over_processes(runtime, float(sum(count_masks(b.targets) for b in micro_batches)))
                extra["num_masks"] = masks / (runtime.world_size * accumulation)
            for micro, batch in enumerate(micro_batches):
                batch = batch.to(runtime.device, non_blocking=True)
                images, targets = batch.images, batch.targets
                generator = _step_generator(settings.seed, step, runtime.rank, micro)
                sync = micro == accumulation - 1 or runtime.world_size == 1
                context = contextlib.nullcontext() if sync else wrapped.no_sync()  # type: ignore[operator]
                with context:
                    with runtime.autocast():
                        losses = wrapped(images, targets, generator, **extra)
                    loss = total_loss(losses) / accumulation
                    loss.backward()
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach()) / accumulation
                accuracy = _similarity_accuracy(module)
                if accuracy is not None:
                    diagnostics.setdefault("sim_accuracy", []).append(accuracy)
            if settings.optim.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(module.parameters(), settings.optim.grad_clip_norm)
            optimizer.step()
            clear_gradients(optimizer)
            losses_mean = sums
            if runtime.is_main:
                _log(work_dir / LOG_FILE, step, optimizer, sums,
                     {name: sum(values) / len(values) for name, values in diagnostics.items()})
            done = step + 1
            if done % checkpoint_every == 0 and done < settings.iters:
                if runtime.is_main:
                    save_checkpoint(work_dir / CHECKPOINTS, step=done, module=module, optimizer=optimizer, extra={})
                runtime.barrier()
            last_layer = " ".join(f"{k[5:]} {v:.3f}" for k, v in sums.items() if "_aux" not in k)
            advance(1, note=f"loss {sum(sums.values()):.3f} ({last_layer})")
    seconds = time.perf_counter() - began
    steps = settings.iters - start
    state = {k: v.detach().cpu() for k, v in module.model.state_dict().items()}
    return LoopResult(
        model_state=state, steps=settings.iters, resumed_from=start, seconds=seconds,
        images_per_second=steps * settings.batch_size / seconds if seconds > 0 else 0.0,
        final_losses={k: round(v, 6) for k, v in losses_mean.items()},
    )


def _similarity_accuracy(module: nn.Module) -> float | None:
    """The similarity net's balanced accuracy on this micro-batch's base pairs, if it has one."""
    pair_losses = getattr(getattr(module, "criterion", None), "pair_losses", None)
    return None if pair_losses is None else pair_losses.accuracy


def _log(path: Path, step: int, optimizer: torch.optim.Optimizer, losses: dict[str, float],
         diagnostics: dict[str, float]) -> None:
    """One JSON line: the step, its learning rate, the total and every weighted loss term, then
    diagnostics that are not optimised (``sim_accuracy``: the similarity net's balanced accuracy
    on the step's base pairs, 0.5 = chance)."""
    record = {"step": step, "lr": optimizer.param_groups[-1]["lr"], "loss": round(sum(losses.values()), 6),
              **{k: round(v, 6) for k, v in losses.items()}, **{k: round(v, 4) for k, v in diagnostics.items()}}
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
