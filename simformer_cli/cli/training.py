"""``simformer train`` (a split -> a model) and ``simformer retrain`` (+ pseudo labels -> a model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from simformer_cli.cli import options
from simformer_cli.cli.console import RichReporter, print_json, stderr
from simformer_cli.cli.options import DeviceOption, ForceOption, JsonOption, SetOption, WorkersOption, choice, examples
from simformer_cli.settings.model import Regularizer
from simformer_cli.settings.training import PresetName

#: The methods ``train`` offers (retrain's ``supervised`` is not one).
TrainMethod = Literal["simformer", "oracle", "cam"]

TRAIN_EXAMPLES = examples(
    "simformer train --split runs/syn/split.zarr",
    "simformer train --split runs/syn/split.zarr --iters 200 --batch-size 4 --device cpu --json",
    "simformer train --split runs/syn/split.zarr --set loss.distill_weight=0.3 --resume",
    "simformer train --split runs/syn/split.zarr --regularizer dfr --set loss.dfr_weight=2",
    "torchrun --nproc_per_node 2 -m simformer_cli train --split runs/ade/split.zarr --preset paper",
)
RETRAIN_EXAMPLES = examples(
    "simformer retrain --split runs/syn/split.zarr --pseudolabels runs/syn/pseudolabels.zarr",
    "simformer retrain --split runs/syn/split.zarr --pseudolabels runs/syn/pseudolabels.zarr "
    "--init-from runs/syn/model.zarr --iters 500",
)

PresetOption = Annotated[PresetName, choice("--preset", PresetName, help="tiny: CPU minutes; paper: ResNet-50, GPUs.")]
IterationsOption = Annotated[Optional[int], typer.Option(help="Training steps (default: the preset's).")]
BatchSizeOption = Annotated[Optional[int], typer.Option(help="Global batch: images per step over all devices.")]
LearningRateOption = Annotated[Optional[float], typer.Option(help="Base learning rate (default: the preset's).")]
SeedOption = Annotated[Optional[int], typer.Option(help="Seed of initialisation, data order and augmentation.")]
CheckpointOption = Annotated[int, typer.Option(help="Write a resumable checkpoint every N steps.")]
ResumeOption = Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint of this run.")]
BackboneOption = Annotated[Optional[str], typer.Option(
    help="Backbone weights: imagenet (or imagenet-r50 / imagenet-r101: torchvision's ImageNet ResNet, fetched once "
         "into torch's hub cache), or a local torchvision-layout ResNet file (.pth).")]
RegularizerOption = Annotated[Optional[Regularizer], choice(
    "--regularizer", Regularizer, help="dfr: add the regularized loss on unlabelled pixels (loss.dfr_* settings); "
                                       "default: the preset's (none).")]


def with_regularizer(overrides: list[str] | None, regularizer: str | None) -> list[str]:
    """The ``--set`` items, then ``--regularizer`` as one more: a named option wins over ``--set``."""
    return [*(overrides or ()), *([f"loss.regularizer={regularizer}"] if regularizer is not None else [])]


def train(
    split: Annotated[Path, typer.Option(help="Split artifact to train on.")],
    out: Annotated[Optional[Path], typer.Option(help="Output model artifact (default: beside the split, model.zarr).")] = None,
    preset: PresetOption = "tiny",
    method: Annotated[TrainMethod, choice(
        "--method", TrainMethod, help="simformer: weak labels; oracle: full train labels (an upper bound); "
                                      "cam: the CAM baseline, a classifier for pseudolabel.")] = "simformer",
    iters: IterationsOption = None,
    batch_size: BatchSizeOption = None,
    lr: LearningRateOption = None,
    seed: SeedOption = None,
    checkpoint_every: CheckpointOption = 100,
    resume: ResumeOption = False,
    device: DeviceOption = "auto",
    threads: options.ThreadsOption = None,
    workers: WorkersOption = None,
    backbone_weights: BackboneOption = None,
    regularizer: RegularizerOption = None,
    set_: SetOption = None,
    force: ForceOption = False,
    json_out: JsonOption = False,
) -> None:
    """Train SimFormer on a split (weak labels only) into a model artifact."""
    from simformer_cli.pipeline.train import run_train
    options.use_threads(threads)

    result = run_train(
        split=split, out=out, preset=preset, method=method, iters=iters, batch_size=batch_size, lr=lr, seed=seed,
        overrides=with_regularizer(set_, regularizer),
        checkpoint_every=options.positive("--checkpoint-every", checkpoint_every), resume=resume, device=device, workers=options.workers(workers), backbone_weights=backbone_weights,
        force=force, reporter=RichReporter("train"),
    )
    summary = result.manifest.summary
    stderr.print(f"model {result.path}: {summary.steps} steps, {summary.images_per_second:.1f} images/s, "
                 f"final loss {sum(summary.final_losses.values()):.3f}", markup=False)
    if json_out:
        print_json(result.manifest.model_dump(mode="json"))


def retrain(
    split: Annotated[Path, typer.Option(help="Split artifact.")],
    pseudolabels: Annotated[Path, typer.Option(help="Pseudo-label artifact made from this split.")],
    init_from: Annotated[Optional[Path], typer.Option(help="Start from this model's weights (the one-stage model of this "
                                                           "split) instead of the preset's initialisation.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output model artifact (default: beside the split, model-retrained.zarr).")] = None,
    preset: PresetOption = "tiny",
    iters: IterationsOption = None,
    batch_size: BatchSizeOption = None,
    lr: LearningRateOption = None,
    seed: SeedOption = None,
    checkpoint_every: CheckpointOption = 100,
    resume: ResumeOption = False,
    device: DeviceOption = "auto",
    threads: options.ThreadsOption = None,
    workers: WorkersOption = None,
    backbone_weights: BackboneOption = None,
    regularizer: RegularizerOption = None,
    set_: SetOption = None,
    force: ForceOption = False,
    json_out: JsonOption = False,
) -> None:
    """Retrain a plain MaskFormer on base ground truth + novel pseudo labels."""
    from simformer_cli.pipeline.retrain import run_retrain
    options.use_threads(threads)

    result = run_retrain(
        split=split, pseudolabels=pseudolabels, out=out, init_from=init_from, preset=preset,
        iters=iters, batch_size=batch_size, lr=lr, seed=seed, overrides=with_regularizer(set_, regularizer),
        checkpoint_every=options.positive("--checkpoint-every", checkpoint_every), resume=resume, device=device,
        workers=options.workers(workers), backbone_weights=backbone_weights, force=force,
        reporter=RichReporter("retrain"),
    )
    summary = result.manifest.summary
    stderr.print(f"model {result.path}: {summary.steps} steps, {summary.images_per_second:.1f} images/s", markup=False)
    if json_out:
        print_json(result.manifest.model_dump(mode="json"))
