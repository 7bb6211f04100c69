"""The ``eval`` stage: predictions + the split's ground truth -> a metrics artifact.

The confusion matrix is accumulated image by image (memory does not grow with the dataset). Cheap,
so it is always recomputed. Predictions made on another split, or on a folder of images without
ground truth, are refused. With ``boundary_band`` N > 0 the report also scores the pixels within N
pixels of a ground-truth label edge (``evaluation.boundary``).
"""

from __future__ import annotations

from pathlib import Path

from simformer_cli.artifacts.metrics import CHART_FILE, EvalParams, MetricsManifest, write_confusion
from simformer_cli.artifacts.manifest import Inputs, Provenance
from simformer_cli.artifacts.predictions import PredictionsArtifact
from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.artifacts.store import publish, staged_artifact
from simformer_cli.errors import UserError
from simformer_cli.evaluation import ConfusionMatrix, compute_report, iou_bar_chart, write_png
from simformer_cli.evaluation.boundary import BoundaryConfusion
from simformer_cli.pipeline.stage import StageResult
from simformer_cli.progress import Reporter, SilentReporter

#: How the report's warning begins when the ground truth holds base masks only.
NOVEL_NOT_SCORED = "novel classes not scored"


def run_eval(
    *, predictions: Path, split: Path, out: Path | None = None, chart: bool = True, boundary_band: int = 0,
    reporter: Reporter | None = None,
) -> StageResult[MetricsManifest]:
    reporter = reporter or SilentReporter()
    preds = PredictionsArtifact(predictions)
    split_artifact = SplitArtifact(split)
    subset = preds.subset_of(split_artifact, split)
    manifest = split_artifact.manifest
    coverage = manifest.coverage(subset)
    if coverage == "none":
        raise UserError(f"{split}: the {subset} images came without masks (split --tags), so eval has nothing to score; "
                        f"infer, viz and export work without masks, or give {subset} masks and rerun split")
    novel_unscored = (f"{NOVEL_NOT_SCORED}: the {subset} masks hold the base classes only (the novel classes "
                      "came as tags); base classes are scored") if coverage == "base" else None
    truth = split_artifact.full_labels(subset)
    confusion = ConfusionMatrix(len(manifest.class_names), manifest.ignore_index)
    band = BoundaryConfusion(len(manifest.class_names), manifest.ignore_index, boundary_band) if boundary_band else None
    with reporter.task(f"evaluating {subset}", preds.count()) as advance:
        for index in range(preds.count()):
            predicted, wanted = preds.label(index), truth(index)
            confusion.update(predicted, wanted)
            if band is not None:
                band.update(predicted, wanted)
            advance(1)
    report = compute_report(confusion, manifest.class_names, manifest.base_classes, manifest.novel_classes,
                            num_images=preds.count(), ignored_pixels=confusion.ignored_pixels,
                            novel_unscored=novel_unscored)
    if band is not None:
        report = report.model_copy(update={"boundary": band.result(manifest.class_names, manifest.base_classes,
                                                                  manifest.novel_classes)})
    out = Path(out) if out is not None else Path(predictions).with_name(Path(predictions).stem + ".metrics.zarr")
    inputs = Inputs(artifacts={"predictions": preds.ref, "split": split_artifact.ref})
    with staged_artifact(out, kind="metrics", inputs=inputs) as staging:
        arrays = write_confusion(staging, confusion.counts)
        if chart:
            write_png(staging / CHART_FILE, iou_bar_chart(report))
        metrics = MetricsManifest(
            inputs=inputs, params=EvalParams(subset=subset, boundary_band=boundary_band or None), summary=report, arrays=arrays,
            provenance=Provenance.of_this_run(labels=manifest.provenance.labels),  # where the split's labels came from
            class_names=manifest.class_names, base_classes=manifest.base_classes,
            novel_classes=manifest.novel_classes,
        )
        metrics, digest = publish(staging, out, metrics)
    return StageResult(metrics, digest, out)
