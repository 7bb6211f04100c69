"""The ``retrain`` stage: plain supervised MaskFormer training on base ground truth + novel pseudo
labels, with the same loop, presets, resume and artifact as ``train``. Pseudo labels made from
another split are refused; there is no fallback to ground truth."""

from __future__ import annotations

from pathlib import Path

from simformer_cli.artifacts.manifest import ArtifactRef
from simformer_cli.artifacts.model import ModelManifest, checked_weights_file, load_weights_into
from simformer_cli.artifacts.pseudolabels import PseudoLabelsManifest
from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.artifacts.store import open_artifact
from simformer_cli.errors import UserError
from simformer_cli.model import build_model
from simformer_cli.pipeline.stage import StageResult
from simformer_cli.pipeline.train import run_train
from simformer_cli.settings.model import ModelSettings


def run_retrain(*, split: Path, pseudolabels: Path, out: Path | None = None, init_from: Path | None = None,
                **training) -> StageResult[ModelManifest]:  # noqa: ANN003
    """``training``: the options of :func:`run_train` (preset, iters, batch_size, resume, device, ...).

    ``init_from``: a SimFormer model trained on this split whose weights the retraining starts
    from (fine-tuning on the pseudo labels) instead of the preset's initialisation; the paper
    retrains from the backbone's initialisation, which is the default.
    """
    manifest, digest, _ = open_artifact(pseudolabels, PseudoLabelsManifest)  # its files checked before training
    split_artifact = SplitArtifact(split)
    if not manifest.made_from(split_artifact.digest):
        raise UserError(f"--pseudolabels {pseudolabels}: made from another split than {split}; "
                        "run pseudolabel on this split first")
    if manifest.arrays["sizes"].shape[0] != split_artifact.count("train"):
        raise UserError(f"--pseudolabels {pseudolabels}: holds {manifest.arrays['sizes'].shape[0]} images, "
                        f"the split's train subset {split_artifact.count('train')}")
    extra_inputs = {"pseudolabels": ArtifactRef.of(pseudolabels, manifest, digest)}
    init_weights = None
    if init_from is not None:
        extra_inputs["init"], init_weights = _initial_model(Path(init_from), split_artifact)
    return run_train(
        split=split, out=out if out is not None else Path(split).parent / "model-retrained.zarr",
        method="supervised", stage="retrain", extra_inputs=extra_inputs, init_weights=init_weights,
        pseudolabels=Path(pseudolabels), **training,
    )


def _initial_model(path: Path, split: SplitArtifact) -> tuple[ArtifactRef, tuple[Path, ModelSettings]]:
    """The model ``--init-from`` names, checked: a segmenter trained on this split, weights intact
    (every tensor of the network's dtype and finite: checked here, before anything is written)."""
    manifest, digest, weights = checked_weights_file(path)
    settings = manifest.params.settings
    if settings.method == "cam":
        raise UserError(f"--init-from {path}: a CAM classifier cannot start a segmenter; give a model from train")
    if settings.method == "oracle":
        raise UserError(f"--init-from {path}: trained on the full labels (--method oracle), novel pixels included; "
                        "a weak-shot retrain starts from a weak-shot model (train without --method oracle)")
    if not manifest.made_from(split.digest):
        raise UserError(f"--init-from {path}: trained on another split; use a model trained on this split")
    load_weights_into(build_model(settings.model), weights, artifact=path, stage=manifest.stage)
    return ArtifactRef.of(path, manifest, digest), (weights, settings.model)
