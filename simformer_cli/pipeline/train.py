"""The ``train`` stage (and the engine of ``retrain``): a split -> a model artifact.

Checkpoints live in the hidden ``.NAME.partial`` folder beside the output, keyed by the digest of
the run's inputs and settings; ``--resume`` continues from the newest one and refuses one made
with other settings. Under torchrun every process trains; rank 0 alone writes files.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import shutil
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from simformer_cli.artifacts.manifest import ArtifactRef, Inputs, Provenance
from simformer_cli.artifacts.model_manifest import ModelManifest, TrainParams, TrainSummary
from simformer_cli.artifacts.store import current_artifact, plan_key, publish, read_manifest, staged_artifact
from simformer_cli.data.split_store import AUDIT_LABELS, AuditLabelReader, SplitArtifact
from simformer_cli.data.train_data import LabelReader
from simformer_cli.errors import UserError
from simformer_cli.model.settings import ModelSettings
from simformer_cli.pipeline.pseudolabel import PseudoLabelReader
from simformer_cli.progress import Reporter, SilentReporter
from simformer_cli.training.checkpoint import latest_checkpoint
from simformer_cli.training.devices import DeviceChoice, broadcast_object, start_runtime, stop_runtime
from simformer_cli.training.loop import CHECKPOINTS, train_loop
from simformer_cli.training.model_artifact import file_sha256, write_weights
from simformer_cli.training.settings import (
    MAX_LR, MAX_SEED, Method, PresetName, TrainSettings, batch_problem, preset_settings,
)

RESUME_KEY_FILE = ".resume-key"

#: What a training run may read as labels, as the model manifest records it (``label_sources``).
WEAK_LABELS = "split:train/labels (weak: novel pixels ignored)"
IMAGE_LABELS = "split:train/image_labels"
FULL_LABELS = "split:audit/train_labels (full: novel pixels included)"
CROP_LABELS = "split:audit/train_labels (only which novel classes are inside each crop)"
PSEUDO_LABELS = "pseudolabels:labels (base ground truth + predicted novel pixels)"


@dataclass(frozen=True)
class TrainingLabels:
    """Where one run's labels come from: decided once, from the fully resolved settings."""

    reader: LabelReader | None  # None: the split's weak train labels
    crop_reader: LabelReader | None  # image_labels=crop: the full labels the crops' classes are read from
    sources: tuple[str, ...]


def training_labels(settings: TrainSettings, split: SplitArtifact, pseudolabels: Path | None) -> TrainingLabels:
    """The labels ``settings`` train on. Only ``method`` (and ``image_labels``) of the resolved settings
    decide, so no option can make a run read other labels than its manifest says it did."""
    has_full = AUDIT_LABELS in split.manifest.arrays
    if settings.method == "supervised" or pseudolabels is not None:
        if settings.method != "supervised" or pseudolabels is None:
            raise UserError(f"method {settings.method}: pseudo labels are trained on by `simformer retrain` "
                            "(method supervised) only")
        return TrainingLabels(PseudoLabelReader(Path(pseudolabels)), None, (PSEUDO_LABELS,))
    if settings.method == "oracle":
        if not has_full:
            raise UserError(f"--method oracle: {split.path} has no full train labels; "
                            "make the split with --keep-train-labels")
        return TrainingLabels(AuditLabelReader(split.path), None, (FULL_LABELS,))
    if settings.image_labels == "crop":
        if not has_full:
            raise UserError(f"--set image_labels=crop: {split.path} has no full train labels to read the crops' "
                            "classes from; make the split with --keep-train-labels")
        return TrainingLabels(None, AuditLabelReader(split.path), (WEAK_LABELS, IMAGE_LABELS, CROP_LABELS))
    return TrainingLabels(None, None, (WEAK_LABELS, IMAGE_LABELS))


@dataclass(frozen=True)
class TrainResult:
    manifest: ModelManifest
    digest: str
    path: Path
    skipped: bool


def resolve_settings(
    split: SplitArtifact, *, preset: PresetName, method: Method, iters: int | None, batch_size: int | None,
    seed: int | None, lr: float | None, overrides: Sequence[str] = (), world_size: int = 1,
) -> TrainSettings:
    """The preset for ``split``, then ``--set KEY=VALUE`` overrides, then the named options.

    Also checks that the global batch cuts into the micro-batches of ``world_size`` processes, so a
    batch the loop cannot use is refused before anything is written.
    """
    sizes = split.sizes("train")
    short_side = int(np.median(sizes.min(axis=1)))
    settings = preset_settings(preset, num_classes=split.num_classes, dataset=split.manifest.params.dataset,
                               image_size=short_side, method=method)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed {seed}: expected an integer from 0 to {MAX_SEED} (2**63 - 1)")
    if lr is not None and not (math.isfinite(lr) and 0 < lr <= MAX_LR):
        raise UserError(f"--lr {lr}: expected a finite learning rate above 0 and at most {MAX_LR:g}, e.g. 0.001")
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key == "preset":
            raise UserError(f"--set {item}: choose the preset with --preset")
        if key == "method":  # it decides the preset's losses and which labels training reads: one place only
            raise UserError(f"--set {item}: choose the method with `train --method` "
                            "(retrain always trains on pseudo labels)")
    data = apply_overrides(settings.model_dump(), overrides)
    for key, value in (("iters", iters), ("batch_size", batch_size), ("seed", seed)):
        if value is not None:
            data[key] = value
    if lr is not None:
        data["optim"]["lr"] = lr
    try:
        resolved = TrainSettings.model_validate(data)
    except ValueError as exc:
        if not hasattr(exc, "errors"):
            raise UserError(f"training settings: {exc}") from None
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        where = ".".join(str(part) for part in first["loc"])
        given = {"iters": iters, "batch_size": batch_size, "seed": seed, "optim.lr": lr}
        if where not in given and "batch size" in message:  # the pairs check of the whole settings
            where = "batch_size"
        if given.get(where) is not None:  # name the option the user typed, with the value given
            raise UserError(f"--{where.removeprefix('optim.').replace('_', '-')} {given[where]}: {message}") from None
        typed = [item for item in overrides if item.partition("=")[0].strip() == where]
        if typed:
            raise UserError(f"--set {typed[-1]}: {message}") from None
        raise UserError(f"training settings: {where + ': ' if where else ''}{message}") from None
    problem = batch_problem(resolved.batch_size, world_size, resolved.loss.needs_pairs)
    if problem:
        if batch_size is not None:
            raise UserError(f"--batch-size {batch_size}: {problem}")
        typed = [item for item in overrides if item.partition("=")[0].strip() == "batch_size"]
        if typed:
            raise UserError(f"--set {typed[-1]}: {problem}")
        raise UserError(f"the preset's batch size {resolved.batch_size}: {problem}; pass --batch-size")
    return resolved


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply ``KEY=VALUE`` items (dotted keys into the settings, values read as JSON where they
    parse, else as text) to a settings dump; an unknown key is a :class:`UserError`."""
    data = json.loads(json.dumps(data))  # a deep copy
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {item}: expected KEY=VALUE, e.g. --set loss.complementary=false")
        parts = key.split(".")
        node = data
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                known = sorted(node) if isinstance(node, dict) else []
                near = difflib.get_close_matches(part, known, n=1)
                where = ".".join(parts[:depth])
                hint = f"did you mean {'.'.join([*parts[:depth], near[0]])}?" if near else (
                    f"known keys{' under ' + where if where else ''}: {', '.join(known)}")
                raise UserError(f"--set {item}: no setting {key}; {hint}")
            if depth == len(parts) - 1:
                if isinstance(node[part], dict):
                    raise UserError(f"--set {item}: {key} is a group; set one of its keys, "
                                    f"e.g. {key}.{next(iter(node[part]))}")
                try:
                    node[part] = json.loads(text)
                except ValueError:
                    node[part] = text
            else:
                node = node[part]
    return data


def _check_backbone_weights(settings: TrainSettings, path: Path) -> None:
    """Refuse an unusable ``--backbone-weights`` file before anything is written (training loads it again)."""
    import warnings

    from simformer_cli.model import build_model, load_backbone_weights

    with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses anyway
        warnings.simplefilter("ignore")
        load_backbone_weights(build_model(settings.model).backbone, path)


def _partial_dir(out: Path) -> Path:
    out = out.absolute()
    return out.parent / f".{out.name}.partial"


def _resumable(out: Path, key: str) -> bool:
    partial = _partial_dir(out)
    key_file = partial / RESUME_KEY_FILE
    return key_file.is_file() and key_file.read_text() == key and latest_checkpoint(partial / CHECKPOINTS) is not None


def _drop_checkpoints(folder: Path) -> None:
    """Delete checkpoints so that a kill half-way never leaves one that looks complete.

    ``latest_checkpoint`` only sees a step folder with its ``state.json``: that file goes first, so a
    folder whose tensors are already gone is never offered to ``--resume``.
    """
    if not folder.is_dir():
        return
    for step in folder.iterdir():
        if step.is_dir():
            (step / "state.json").unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def _check_resume(out: Path, key: str) -> None:
    partial = _partial_dir(out)
    key_file = partial / RESUME_KEY_FILE
    if not key_file.is_file() or latest_checkpoint(partial / CHECKPOINTS) is None:
        raise UserError(f"--resume: no checkpoint of a run writing {out} was found; run without --resume to start")
    if key_file.read_text() != key:
        raise UserError(
            f"--resume: the checkpoint for {out} was made with other inputs or settings; "
            "rerun with the original options, or without --resume to start over"
        )


def default_workers(device_type: str) -> int:
    """Data-loading worker processes of a training process when --workers is not given.

    None on CPU: the training threads already use every core there, and a worker competes with
    them (no faster a step on two cores, BENCHMARKS.md "Training step"). On CUDA, this process's
    share of the cores less one for itself, at most 4; under torchrun the LOCAL_WORLD_SIZE
    processes of a machine share the cores.
    """
    if device_type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(4, cores - 1))


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
    backbone_weights: Path | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
    stage: Literal["train", "retrain"] = "train",
    extra_inputs: dict[str, ArtifactRef] | None = None,
    pseudolabels: Path | None = None,
    init_weights: tuple[Path, ModelSettings] | None = None,
    on_step=None,  # noqa: ANN001 - test hook: called with the number of finished steps
) -> TrainResult:
    runtime = start_runtime(device)
    reporter = reporter if (reporter is not None and runtime.is_main) else SilentReporter()
    workers = default_workers(runtime.device.type) if workers is None else workers
    try:
        split_artifact = SplitArtifact(split)
        settings = resolve_settings(split_artifact, preset=preset, method=method, iters=iters,
                                    batch_size=batch_size, seed=seed, lr=lr, overrides=overrides,
                                    world_size=runtime.world_size)
        if init_weights is not None and init_weights[1] != settings.model:
            raise UserError("--init-from: that model's network differs from this run's "
                            "(another preset or --set model.*); use the same network settings")
        labels = training_labels(settings, split_artifact, pseudolabels)
        if backbone_weights is not None and not Path(backbone_weights).is_file():
            raise UserError(f"--backbone-weights {backbone_weights}: no such file")
        if backbone_weights is not None:
            _check_backbone_weights(settings, Path(backbone_weights))
        params = TrainParams(settings=settings,
                             backbone_weights_sha256=file_sha256(backbone_weights) if backbone_weights else None)
        inputs = Inputs(artifacts={
            "split": ArtifactRef(path=str(Path(split).absolute()), kind="split", digest=split_artifact.digest),
            **(extra_inputs or {})})
        out = Path(out) if out is not None else Path(split).parent / ("model.zarr" if stage == "train" else "model-retrained.zarr")
        current = current_artifact(out, ModelManifest, inputs, params, force=force)
        if current is not None:
            reporter.info(f"{out}: up to date (same inputs and settings), skipping; pass --force to retrain")
            return TrainResult(*current, out, True)
        key = plan_key(inputs, params)
        if resume == "auto":  # the pipeline: continue a matching interrupted run, else start
            resume = _resumable(out, key)
        elif resume:
            _check_resume(out, key)
        common = dict(settings=settings, split_path=Path(split), runtime=runtime, resume=resume,
                      checkpoint_every=checkpoint_every, workers=workers, reporter=reporter,
                      label_reader=labels.reader, crop_label_reader=labels.crop_reader,
                      backbone_weights=backbone_weights, init_weights=init_weights[0] if init_weights else None,
                      on_step=on_step)
        if not runtime.is_main:
            work_dir = broadcast_object(runtime, None)
            train_loop(work_dir=Path(work_dir), **common)  # type: ignore[arg-type]
            runtime.barrier()
            return TrainResult(*read_manifest(out, ModelManifest), out, False)  # type: ignore[misc]
        with staged_artifact(out, kind="model", inputs=inputs, resume_key=key) as staging:
            if backbone_weights is None and settings.model.backbone != "tiny" and settings.model.backbone_norm == "frozen_bn":
                # only once the inputs are accepted, so that a refusal stays one line
                reporter.info("warning: training a ResNet with frozen batch norm from random weights; "
                              "pass --backbone-weights (ImageNet, torchvision layout) as the paper does")
            if not resume:
                _drop_checkpoints(staging / CHECKPOINTS)
            broadcast_object(runtime, str(staging))
            result = train_loop(work_dir=staging, **common)  # type: ignore[arg-type]
            _drop_checkpoints(staging / CHECKPOINTS)
            manifest = ModelManifest(
                stage=stage,
                inputs=inputs,
                params=params,
                provenance=Provenance(command=list(sys.argv), host=socket.gethostname()),
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
                weights_sha256=write_weights(staging, result.model_state),
            )
            manifest, digest = publish(staging, out, manifest)
        runtime.barrier()
        return TrainResult(manifest, digest, out, False)
    finally:
        stop_runtime(runtime)
