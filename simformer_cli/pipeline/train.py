"""The ``train`` stage (and the engine of ``retrain``): a split -> a model artifact.

Checkpoints live in the hidden ``.NAME.partial`` folder beside the output, keyed by the digest of
the run's inputs and settings; ``--resume`` continues from the newest one and refuses one made
with other settings. Under torchrun every process trains; rank 0 alone writes files.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from simformer_cli.artifacts.manifest import ArtifactRef, Inputs, Provenance
from simformer_cli.artifacts.model import ModelManifest, TrainParams, TrainSummary, file_sha256, write_weights
from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.artifacts.store import partial_dir, pending_resume_key, plan_key, publish, read_manifest, staged_artifact
from simformer_cli.devices import broadcast_object
from simformer_cli.errors import UserError
from simformer_cli.model import build_model, load_backbone_weights
from simformer_cli.model.pretrained import NAMES as PRETRAINED_NAMES, imagenet_weights
from simformer_cli.pipeline.stage import StageResult, running_on, up_to_date, warn_if_busy
from simformer_cli.progress import Reporter
from simformer_cli.settings.choices import DeviceChoice
from simformer_cli.settings.model import ModelSettings
from simformer_cli.settings.training import Method, PresetName, TrainSettings
from simformer_cli.training.checkpoint import drop_checkpoints, latest_checkpoint
from simformer_cli.training.labels import training_labels
from simformer_cli.training.loop import CHECKPOINTS, default_workers, train_loop
from simformer_cli.training.resolve import resolve_settings


def _check_backbone_weights(settings: TrainSettings, path: Path) -> None:
    """Refuse an unusable ``--backbone-weights`` file before anything is written (training loads it again)."""
    with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses anyway
        warnings.simplefilter("ignore")
        load_backbone_weights(build_model(settings.model).backbone, path)


def _resumable(out: Path, key: str) -> bool:
    return pending_resume_key(out) == key and latest_checkpoint(partial_dir(out) / CHECKPOINTS) is not None


def _check_resume(out: Path, key: str) -> None:
    found = pending_resume_key(out)
    if found is None or latest_checkpoint(partial_dir(out) / CHECKPOINTS) is None:
        raise UserError(f"--resume: no checkpoint of a run writing {out} was found; run without --resume to start")
    if found != key:
        raise UserError(
            f"--resume: the checkpoint for {out} was made with other inputs or settings; "
            "rerun with the original options, or without --resume to start over"
        )


def run_train(
    *,
    split: Path,
    out: Path | None = None,
    preset: PresetName = "tiny",
    method: Method = "simformer",
    iters: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    lr: float | None = None,
    overrides: Sequence[str] = (),
    checkpoint_every: int = 100,
    resume: bool | Literal["auto"] = False,
    device: DeviceChoice = "auto",
    workers: int | None = None,
    backbone_weights: Path | str | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
    stage: Literal["train", "retrain"] = "train",
    extra_inputs: dict[str, ArtifactRef] | None = None,
    pseudolabels: Path | None = None,
    init_weights: tuple[Path, ModelSettings] | None = None,
) -> StageResult[ModelManifest]:
    """Train on ``split`` into ``out`` (or confirm it up to date). ``stage``, ``extra_inputs``,
    ``pseudolabels`` and ``init_weights`` are how ``retrain`` runs the same engine."""
    with running_on(device, reporter) as (runtime, reporter):
        workers = default_workers(runtime.device.type) if workers is None else workers
        split_artifact = SplitArtifact(split)
        settings = resolve_settings(split_artifact, preset=preset, method=method, iters=iters,
                                    batch_size=batch_size, seed=seed, lr=lr, overrides=overrides,
                                    world_size=runtime.world_size)
        if init_weights is not None and init_weights[1] != settings.model:
            raise UserError("--init-from: that model's network differs from this run's "
                            "(another preset or --set model.*); use the same network settings")
        labels = training_labels(settings, split_artifact, pseudolabels)
        if backbone_weights is not None and str(backbone_weights) in PRETRAINED_NAMES:
            backbone_weights = imagenet_weights(str(backbone_weights), settings.model.backbone)
        if backbone_weights is not None and not Path(backbone_weights).is_file():
            raise UserError(f"--backbone-weights {backbone_weights}: no such file")
        if backbone_weights is not None:
            _check_backbone_weights(settings, Path(backbone_weights))
        params = TrainParams(settings=settings,
                             backbone_weights_sha256=file_sha256(backbone_weights) if backbone_weights else None)
        inputs = Inputs(artifacts={"split": split_artifact.ref, **(extra_inputs or {})})
        out = Path(out) if out is not None else Path(split).parent / ("model.zarr" if stage == "train" else "model-retrained.zarr")
        current = up_to_date(out, ModelManifest, inputs, params, force=force, reporter=reporter,
                             same="same inputs and settings", redo="retrain")
        if current is not None:
            return current
        key = plan_key(inputs, params)
        if resume == "auto":  # the pipeline: continue a matching interrupted run, else start
            resume = _resumable(out, key)
        elif resume:
            _check_resume(out, key)
        common = dict(settings=settings, split_path=Path(split), runtime=runtime, resume=resume,
                      checkpoint_every=checkpoint_every, workers=workers, reporter=reporter,
                      label_reader=labels.reader, crop_label_reader=labels.crop_reader,
                      backbone_weights=backbone_weights, init_weights=init_weights[0] if init_weights else None)
        if not runtime.is_main:
            work_dir = broadcast_object(runtime, None)
            train_loop(work_dir=Path(work_dir), **common)  # type: ignore[arg-type]
            runtime.barrier()
            return StageResult(*read_manifest(out, ModelManifest), out)
        with staged_artifact(out, kind="model", inputs=inputs, resume_key=key) as staging:
            if backbone_weights is None and settings.model.backbone != "tiny" and settings.model.backbone_norm == "frozen_bn":
                # only once the inputs are accepted, so that a refusal stays one line
                reporter.info("warning: training a ResNet with frozen batch norm from random weights; "
                              "pass --backbone-weights (ImageNet, torchvision layout) as the paper does")
            warn_if_busy(runtime, reporter)
            if not resume:
                drop_checkpoints(staging / CHECKPOINTS)
            broadcast_object(runtime, str(staging))
            result = train_loop(work_dir=staging, **common)  # type: ignore[arg-type]
            drop_checkpoints(staging / CHECKPOINTS)
            manifest = ModelManifest(
                stage=stage,
                inputs=inputs,
                params=params,
                provenance=Provenance.of_this_run(threads=runtime.threads),
                summary=TrainSummary(steps=result.steps, resumed_from=result.resumed_from,
                                     seconds=round(result.seconds, 2),
                                     images_per_second=round(result.images_per_second, 2),
                                     final_losses=result.final_losses, device=str(runtime.device),
                                     world_size=runtime.world_size),
                class_names=split_artifact.manifest.class_names,
                base_classes=split_artifact.manifest.base_classes,
                novel_classes=split_artifact.manifest.novel_classes,
                ignore_index=split_artifact.manifest.ignore_index,
                label_sources=list(labels.sources),
                category_ids=split_artifact.manifest.category_ids,
                weights_sha256=write_weights(staging, result.model_state),
            )
            manifest, digest = publish(staging, out, manifest)
        runtime.barrier()
        return StageResult(manifest, digest, out)
