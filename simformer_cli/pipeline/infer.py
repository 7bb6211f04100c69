"""The ``infer`` stage: a model and a split subset (or a folder of images) -> a predictions artifact.

Resumable by shard and shared between torchrun processes (see ``inference.sharded``).
"""

from __future__ import annotations

from pathlib import Path

from simformer_cli.artifacts.manifest import ArraySpec, ArtifactRef, Inputs, Provenance
from simformer_cli.artifacts.predictions import InferParams, InferSummary, PredictionsManifest
from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.data.images import FolderImages, SplitImages
from simformer_cli.errors import UserError
from simformer_cli.inference.predict import MaskFormerScorer
from simformer_cli.inference.sharded import PredictionJob, argmax_rule, run_prediction_job
from simformer_cli.pipeline.stage import StageResult, load_model, running_on, up_to_date, warn_if_busy
from simformer_cli.progress import Reporter
from simformer_cli.settings.choices import DeviceChoice, SubsetName
from simformer_cli.settings.test_time import TestTimeSettings


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
) -> StageResult[PredictionsManifest]:
    if (split is None) == (images is None):
        raise UserError("infer needs exactly one of --split (with --subset) or --images")
    if not scales or any(s <= 0 for s in scales):
        raise UserError("--scales: give positive factors, e.g. 0.75,1.0,1.25")
    with running_on(device, reporter) as (runtime, reporter):
        network, model_manifest, model_digest = load_model(model, runtime.device)
        if model_manifest.params.settings.method == "cam":
            raise UserError(f"--model {model} is a CAM classifier: it makes pseudo labels (simformer pseudolabel), "
                            "then train a segmenter with simformer retrain")
        refs = {"model": ArtifactRef.of(model, model_manifest, model_digest)}
        augment = model_manifest.params.settings.augment
        if split is not None:
            split_artifact = SplitArtifact(split)
            if subset not in split_artifact.manifest.summary.subsets:
                raise UserError(f"--subset {subset}: {split} has no {subset} subset (it has "
                                f"{', '.join(split_artifact.manifest.summary.subsets)})")
            if not model_manifest.made_from(split_artifact.digest):
                raise UserError(f"--split {split}: the model {model} was trained on another split; "
                                "infer with the split it was trained on")
            source: SplitImages | FolderImages = SplitImages(split_artifact, subset)
            test_time = TestTimeSettings.from_training(augment, scales, flip)
            inputs = Inputs(artifacts={**refs, "split": split_artifact.ref})
            params = InferParams(source="split", subset=subset, test_time=test_time, save_scores=save_scores)
            default_out = Path(model).with_name(f"{Path(model).stem}.pred-{subset}.zarr")
        else:
            source = FolderImages(Path(images))  # type: ignore[arg-type]
            test_time = TestTimeSettings.from_training(augment, scales, flip)
            inputs = Inputs(artifacts=refs, dataset=source.fingerprint)
            params = InferParams(source="images", test_time=test_time, save_scores=save_scores)
            default_out = Path(model).with_name(f"{Path(model).stem}.pred-images.zarr")
        out = Path(out) if out is not None else default_out
        current = up_to_date(out, PredictionsManifest, inputs, params, force=force, reporter=reporter,
                             same="same model, images and settings", redo="redo")
        if current is not None:
            return current
        warn_if_busy(runtime, reporter)
        job = PredictionJob(source=source, scorer=MaskFormerScorer(network, test_time, runtime),  # type: ignore[arg-type]
                            num_classes=len(model_manifest.class_names), ignore_index=model_manifest.ignore_index,
                            label_rule=argmax_rule, save_scores=save_scores)

        def make_manifest(staging: Path, arrays: dict[str, ArraySpec], seconds: float) -> PredictionsManifest:
            return PredictionsManifest(
                inputs=inputs, params=params, arrays=arrays, provenance=Provenance.of_this_run(threads=runtime.threads),
                summary=InferSummary(images=len(source.names), seconds=round(seconds, 2),
                                     images_per_second=round(len(source.names) / max(seconds, 1e-9), 2),
                                     device=str(runtime.device)),
                class_names=model_manifest.class_names, base_classes=model_manifest.base_classes,
                novel_classes=model_manifest.novel_classes, ignore_index=model_manifest.ignore_index,
                label_dtype=job.label_dtype,  # type: ignore[arg-type]
                category_ids=model_manifest.category_ids,
            )

        manifest, digest = run_prediction_job(job, out=out, inputs=inputs, params=params, runtime=runtime,
                                              reporter=reporter, make_manifest=make_manifest,
                                              manifest_model=PredictionsManifest)
        return StageResult(manifest, digest, out)
