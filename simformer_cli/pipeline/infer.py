"""The ``infer`` stage: a model and a split subset (or a folder of images) -> a predictions artifact.

Resumable by shard and shared between torchrun processes (see ``inference.sharded``).
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simformer_cli.artifacts.digest import files_fingerprint
from simformer_cli.artifacts.manifest import (
    ArraySpec,
    ArtifactRef,
    DatasetFingerprint,
    Inputs,
    Provenance,
)
from simformer_cli.artifacts.model_manifest import ModelManifest
from simformer_cli.artifacts.predictions_manifest import (
    InferParams,
    InferSummary,
    PredictionsManifest,
)
from simformer_cli.artifacts.split_manifest import SubsetName
from simformer_cli.artifacts.store import current_artifact
from simformer_cli.data.folder import IMAGE_SUFFIXES
from simformer_cli.data.ingest import _file_digest, _image_size
from simformer_cli.data.source import decode_image, read_bytes
from simformer_cli.data.split_store import SplitArtifact
from simformer_cli.errors import UserError
from simformer_cli.inference.predict import TestTimeSettings
from simformer_cli.inference.sharded import (
    PredictionJob,
    argmax_rule,
    run_prediction_job,
)
from simformer_cli.progress import Reporter, SilentReporter
from simformer_cli.training.devices import DeviceChoice, start_runtime, stop_runtime
from simformer_cli.training.model_artifact import load_model


@dataclass(frozen=True)
class InferResult:
    manifest: PredictionsManifest
    digest: str
    path: Path
    skipped: bool


class SplitImages:
    def __init__(self, split: SplitArtifact, subset: str) -> None:
        self.split, self.subset = split, subset
        self.names = split.names(subset)
        self.sizes = split.sizes(subset)

    def image(self, index: int) -> np.ndarray:
        return self.split.image(self.subset, index)


class FolderImages:
    """Every .jpg/.jpeg/.png directly inside a folder, in name order."""

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise UserError(f"--images {folder}: no such folder")
        self.files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise UserError(f"--images {folder}: no .jpg, .jpeg or .png images in this folder")
        self.names = [p.stem for p in self.files]
        if len(set(self.names)) != len(self.names):
            raise UserError(f"--images {folder}: two images share a name (e.g. a.jpg and a.png); keep one")
        self.sizes = np.asarray([_image_size(p) for p in self.files], dtype=np.int32)
        self.fingerprint = DatasetFingerprint(
            name="images", layout="folder", files=len(self.files),
            digest=files_fingerprint((p.name, _file_digest(p)) for p in self.files))

    def image(self, index: int) -> np.ndarray:
        path = self.files[index]
        return decode_image(path, read_bytes(path))


def test_time_settings(model: ModelManifest, scales: tuple[float, ...], flip: bool) -> TestTimeSettings:
    """The preset's own test size: the training crop (512 ADE20K / 640 COCO-Stuff in the paper preset)."""
    augment = model.params.settings.augment
    return TestTimeSettings(short_side=augment.crop, max_long_side=augment.max_long_side, scales=scales, flip=flip)


def run_infer(
    *,
    model: Path,
    split: Path | None = None,
    subset: SubsetName = "val",
    images: Path | None = None,
    out: Path | None = None,
    scales: tuple[float, ...] = (1.0,),
    flip: bool = False,
    save_scores: bool = False,
    device: DeviceChoice = "auto",
    force: bool = False,
    reporter: Reporter | None = None,
) -> InferResult:
    if (split is None) == (images is None):
        raise UserError("infer needs exactly one of --split (with --subset) or --images")
    if not scales or any(s <= 0 for s in scales):
        raise UserError("--scales: give positive factors, e.g. 0.75,1.0,1.25")
    runtime = start_runtime(device)
    reporter = reporter if (reporter is not None and runtime.is_main) else SilentReporter()
    try:
        network, model_manifest, model_digest = load_model(model, runtime.device)
        if model_manifest.params.settings.method == "cam":
            raise UserError(f"--model {model} is a CAM classifier: it makes pseudo labels (simformer pseudolabel), "
                            "then train a segmenter with simformer retrain")
        refs = {"model": ArtifactRef(path=str(Path(model).absolute()), kind="model", digest=model_digest)}
        if split is not None:
            split_artifact = SplitArtifact(split)
            if subset not in split_artifact.manifest.summary.subsets:
                raise UserError(f"--subset {subset}: {split} has no {subset} subset (it has "
                                f"{', '.join(split_artifact.manifest.summary.subsets)})")
            trained_on = model_manifest.inputs.artifacts.get("split")
            if trained_on is None or trained_on.digest != split_artifact.digest:
                raise UserError(f"--split {split}: the model {model} was trained on another split; "
                                "infer with the split it was trained on")
            source: SplitImages | FolderImages = SplitImages(split_artifact, subset)
            refs["split"] = ArtifactRef(path=str(Path(split).absolute()), kind="split", digest=split_artifact.digest)
            inputs = Inputs(artifacts=refs)
            params = InferParams(source="split", subset=subset,
                                 test_time=test_time_settings(model_manifest, scales, flip), save_scores=save_scores)
            default_out = Path(model).with_name(f"{Path(model).stem}.pred-{subset}.zarr")
        else:
            source = FolderImages(Path(images))  # type: ignore[arg-type]
            inputs = Inputs(artifacts=refs, dataset=source.fingerprint)
            params = InferParams(source="images", test_time=test_time_settings(model_manifest, scales, flip),
                                 save_scores=save_scores)
            default_out = Path(model).with_name(f"{Path(model).stem}.pred-images.zarr")
        out = Path(out) if out is not None else default_out
        current = current_artifact(out, PredictionsManifest, inputs, params, force=force)
        if current is not None:
            reporter.info(f"{out}: up to date (same model, images and settings), skipping; pass --force to redo")
            return InferResult(*current, out, True)
        job = PredictionJob(network=network, source=source, test_time=params.test_time,
                            num_classes=len(model_manifest.class_names), ignore_index=model_manifest.ignore_index,
                            label_rule=argmax_rule, save_scores=save_scores)

        def make_manifest(staging: Path, arrays: dict[str, ArraySpec], seconds: float) -> PredictionsManifest:
            return PredictionsManifest(
                inputs=inputs, params=params, arrays=arrays,
                provenance=Provenance(command=list(sys.argv), host=socket.gethostname()),
                summary=InferSummary(images=len(source.names), seconds=round(seconds, 2),
                                     images_per_second=round(len(source.names) / max(seconds, 1e-9), 2),
                                     device=str(runtime.device)),
                class_names=model_manifest.class_names, base_classes=model_manifest.base_classes,
                novel_classes=model_manifest.novel_classes, ignore_index=model_manifest.ignore_index,
                label_dtype=job.label_dtype,  # type: ignore[arg-type]
            )

        manifest, digest = run_prediction_job(job, out=out, inputs=inputs, params=params, runtime=runtime, reporter=reporter,
                                              make_manifest=make_manifest, manifest_model=PredictionsManifest)
        return InferResult(manifest, digest, out, False)
    finally:
        stop_runtime(runtime)


