"""The ``retrain`` stage (method reference section 6.2): plain supervised MaskFormer training on base
ground truth + novel pseudo labels, with the same loop, presets, resume and artifact as ``train``.
Pseudo labels made from another split are refused; there is no fallback to ground truth."""

from __future__ import annotations

from pathlib import Path

from simformer_cli.artifacts.manifest import ArtifactRef
from simformer_cli.artifacts.pseudolabels_manifest import PseudoLabelsManifest
from simformer_cli.artifacts.store import read_manifest
from simformer_cli.data.split_store import SplitArtifact
from simformer_cli.errors import UserError
from simformer_cli.pipeline.pseudolabel import PseudoLabelReader
from simformer_cli.pipeline.train import TrainResult, run_train


def run_retrain(*, split: Path, pseudolabels: Path, out: Path | None = None, **training) -> TrainResult:  # noqa: ANN003
    """``training``: the options of :func:`run_train` (preset, iters, batch_size, resume, device, ...)."""
    manifest, digest = read_manifest(pseudolabels, PseudoLabelsManifest)
    split_artifact = SplitArtifact(split)
    made_from = manifest.inputs.artifacts.get("split")
    if made_from is None or made_from.digest != split_artifact.digest:
        raise UserError(f"--pseudolabels {pseudolabels}: made from another split than {split}; "
                        "run pseudolabel on this split first")
    if manifest.arrays["sizes"].shape[0] != split_artifact.count("train"):
        raise UserError(f"--pseudolabels {pseudolabels}: holds {manifest.arrays['sizes'].shape[0]} images, "
                        f"the split's train subset {split_artifact.count('train')}")
    ref = ArtifactRef(path=str(Path(pseudolabels).absolute()), kind="pseudolabels", digest=digest)
    return run_train(
        split=split, out=out if out is not None else Path(split).parent / "model-retrained.zarr",
        method="supervised", stage="retrain", extra_inputs={"pseudolabels": ref},
        label_reader=PseudoLabelReader(Path(pseudolabels)), **training,
    )
