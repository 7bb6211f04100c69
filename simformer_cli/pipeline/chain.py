"""``simformer pipeline``: split -> train -> infer -> eval -> pseudolabel -> retrain -> infer -> eval.

With ``rounds`` above 1, pseudolabel and retrain run again from each retrained model (round r's
pseudo labels come from round r-1's model) before the final infer and eval.

Every stage writes into one work folder and skips itself when its artifact is complete and up to
date; an interrupted training continues from its last checkpoint and an interrupted prediction
from its last finished shard, so running the same command again after a kill finishes the chain
with the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from simformer_cli.artifacts.metrics import EvalReport
from simformer_cli.errors import UserError
from simformer_cli.pipeline.evaluate import run_eval
from simformer_cli.pipeline.infer import run_infer
from simformer_cli.pipeline.pseudolabel import check_unnamed, run_pseudolabel
from simformer_cli.pipeline.retrain import run_retrain
from simformer_cli.pipeline.split import run_split
from simformer_cli.pipeline.train import run_train
from simformer_cli.progress import Reporter, SilentReporter
from simformer_cli.settings.choices import Among, DeviceChoice, RetrainStart, Unnamed
from simformer_cli.settings.synthetic import SyntheticSettings
from simformer_cli.settings.training import MAX_BATCH_SIZE, MAX_ITERS, PresetName, batch_problem, preset_settings
from simformer_cli.training.resolve import apply_overrides

#: Most pseudo-label rounds a pipeline runs.
MAX_ROUNDS = 10


def check_training_options(*, iters: int | None, retrain_iters: int | None, batch_size: int | None,
                           rounds: int = 1, overrides: Sequence[str] = (), preset: PresetName = "tiny",
                           ) -> None:
    """Refuse training options that train or retrain would refuse, before the chain starts: a bad
    ``--retrain-iters`` must not wait for split, train, infer and pseudolabel to finish first.
    ``--set`` keys are checked here (an unknown key is refused); their values, by train."""
    if not 1 <= rounds <= MAX_ROUNDS:
        raise UserError(f"--rounds {rounds}: expected 1 to {MAX_ROUNDS} rounds of pseudo labels and retraining")
    if overrides:
        apply_overrides(preset_settings(preset, num_classes=2, dataset="synthetic", image_size=128).model_dump(
            context={"every_setting": True}), overrides)
    for option, value in (("--iters", iters), ("--retrain-iters", retrain_iters)):
        if value is not None and not 1 <= value <= MAX_ITERS:
            raise UserError(f"{option} {value}: expected 1 to {MAX_ITERS} training steps")
    if batch_size is None:
        return
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise UserError(f"--batch-size {batch_size}: expected 1 to {MAX_BATCH_SIZE} images per step")
    if batch_size % 2:  # train (SimFormer) learns from image pairs
        raise UserError(f"--batch-size {batch_size}: batch size {batch_size} must be even: "
                        "similarity transfer trains on image pairs")
    problem = batch_problem(batch_size, int(os.environ.get("WORLD_SIZE", "1")), pairs=True)
    if problem:
        raise UserError(f"--batch-size {batch_size}: {problem}")


@dataclass(frozen=True)
class PipelineResult:
    one_stage: EvalReport
    retrained: EvalReport
    pseudo_label_novel_miou: float | None
    workdir: Path
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each stage, this run


def run_pipeline(
    *,
    workdir: Path,
    dataset: str = "synthetic",
    root: Path | None = None,
    ratio: str | None = None,
    seed: int | None = None,
    official_split: int | None = None,
    novel_classes: str | None = None,
    tags: Path | None = None,
    images: Path | None = None,
    annotations: Path | None = None,
    val_annotations: Path | None = None,
    synthetic: SyntheticSettings | None = None,
    preset: PresetName = "tiny",
    iters: int | None = None,
    retrain_iters: int | None = None,
    batch_size: int | None = None,
    checkpoint_every: int = 50,
    pseudo_scales: tuple[float, ...] = (1.0,),
    pseudo_flip: bool = False,
    pseudo_among: Among = "all",
    pseudo_unnamed: Unnamed = "name",
    retrain_from: RetrainStart = "one-stage",
    rounds: int = 1,
    overrides: Sequence[str] = (),
    train_overrides: Sequence[str] = (),
    device: DeviceChoice = "auto",
    workers: int | None = None,
    reporter: Reporter | None = None,
) -> PipelineResult:
    reporter = reporter or SilentReporter()
    workdir = Path(workdir)
    seconds: dict[str, float] = {}
    clock = [time.perf_counter(), ""]

    def say(step: str) -> None:
        now = time.perf_counter()
        if clock[1]:
            seconds[str(clock[1])] = round(now - float(clock[0]), 2)
        clock[:] = [now, step]
        if step:
            reporter.info(f"── {step}")

    check_training_options(iters=iters, retrain_iters=retrain_iters, batch_size=batch_size, rounds=rounds,
                           overrides=[*overrides, *train_overrides], preset=preset)
    check_unnamed(pseudo_among, pseudo_unnamed, prefix="pseudo-")
    say("split")
    split = run_split(dataset=dataset, root=root, out=workdir / "split.zarr", ratio=ratio, seed=seed,
                      official_split=official_split, novel_classes=novel_classes, tags=tags,
                      images=images, annotations=annotations, val_annotations=val_annotations,
                      synthetic=synthetic, workers=workers, reporter=reporter).path
    training = dict(preset=preset, batch_size=batch_size, checkpoint_every=checkpoint_every, resume="auto",
                    overrides=list(overrides), device=device, reporter=reporter)
    say("train (SimFormer, weak labels)")
    model = run_train(split=split, out=workdir / "model.zarr", iters=iters,
                      **dict(training, overrides=[*overrides, *train_overrides])).path  # type: ignore[arg-type]
    one_stage = _predict_and_evaluate(model, split, device, reporter, say)
    retrained_model = model
    for round_ in range(1, rounds + 1):
        suffix, named = ("", "") if round_ == 1 else (f"-round{round_}", f" (round {round_})")
        say("pseudolabel" + named)
        pseudo = run_pseudolabel(model=retrained_model, split=split, out=workdir / f"pseudolabels{suffix}.zarr",
                                 scales=pseudo_scales, flip=pseudo_flip, among=pseudo_among, unnamed=pseudo_unnamed,
                                 device=device, reporter=reporter)
        say("retrain (base ground truth + novel pseudo labels)" + named)
        # From the previous model's weights by default: within the same budget it ends far above
        # retraining from the preset's initialisation (BENCHMARKS.md); "scratch" is the paper's route.
        retrained_model = run_retrain(split=split, pseudolabels=pseudo.path, out=workdir / f"model-retrained{suffix}.zarr",
                                      init_from=retrained_model if retrain_from == "one-stage" else None,
                                      iters=retrain_iters if retrain_iters is not None else iters,
                                      **training).path  # type: ignore[arg-type]
    retrained = _predict_and_evaluate(retrained_model, split, device, reporter, say)
    say("")
    return PipelineResult(one_stage, retrained, pseudo.manifest.summary.novel_miou_vs_audit, workdir, seconds)


def _predict_and_evaluate(model: Path, split: Path, device: DeviceChoice, reporter: Reporter,
                          say) -> EvalReport:  # noqa: ANN001
    say(f"infer + eval {model.stem}")
    predictions = run_infer(model=model, split=split, subset="val", device=device, reporter=reporter).path
    return run_eval(predictions=predictions, split=split, reporter=reporter).manifest.summary
