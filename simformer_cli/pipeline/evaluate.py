"""The ``eval`` stage: predictions + the split's ground truth -> a metrics artifact.

The confusion matrix is accumulated image by image (memory does not grow with the dataset). Cheap,
so it is always recomputed. Predictions made on another split, or on a folder of images without
ground truth, are refused.
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simformer_cli.artifacts.manifest import ArraySpec, ArtifactRef, Inputs, Provenance
from simformer_cli.artifacts.metrics_manifest import EvalParams, MetricsManifest
from simformer_cli.artifacts.store import publish, staged_artifact
from simformer_cli.data.split_store import COMPRESSORS, SplitArtifact, read_audit_label
from simformer_cli.errors import UserError
from simformer_cli.evaluation import ConfusionMatrix, compute_report, iou_bar_chart, write_png
from simformer_cli.inference.store import PredictionsArtifact
from simformer_cli.progress import Reporter, SilentReporter

CHART_FILE = "iou.png"


@dataclass(frozen=True)
class EvalResult:
    manifest: MetricsManifest
    digest: str
    path: Path


def ground_truth_reader(split: SplitArtifact, subset: str):  # noqa: ANN201
    """Full labels: a labelled subset's own, or the audit copy of the train labels (train labels are weak)."""
    if subset != "train":
        return lambda index: split.label(subset, index)
    if "audit/train_labels" not in split.manifest.arrays:
        raise UserError("eval on train predictions needs the full train labels; rebuild the split with --keep-train-labels")
    return lambda index: read_audit_label(split, index)


def check_predictions_match(predictions: PredictionsArtifact, split: SplitArtifact, split_path: Path) -> str:
    """The subset the predictions cover; refuse predictions of another split or of loose images."""
    params = predictions.manifest.params
    if params.source != "split" or params.subset is None:
        raise UserError(f"{predictions.path}: predictions of a folder of images have no ground truth to compare with")
    made_on = predictions.manifest.inputs.artifacts.get("split")
    if made_on is None or made_on.digest != split.digest:
        raise UserError(f"{predictions.path}: these predictions were made on another split than {split_path}; "
                        "evaluate against the split they were made on")
    if predictions.names() != split.names(params.subset):
        raise UserError(f"{predictions.path}: image names differ from the split's {params.subset} subset")
    return params.subset


def run_eval(
    *, predictions: Path, split: Path, out: Path | None = None, chart: bool = True, reporter: Reporter | None = None
) -> EvalResult:
    reporter = reporter or SilentReporter()
    preds = PredictionsArtifact(predictions)
    split_artifact = SplitArtifact(split)
    subset = check_predictions_match(preds, split_artifact, split)
    manifest = split_artifact.manifest
    truth = ground_truth_reader(split_artifact, subset)
    confusion = ConfusionMatrix(len(manifest.class_names), manifest.ignore_index)
    with reporter.task(f"evaluating {subset}", preds.count()) as advance:
        for index in range(preds.count()):
            confusion.update(preds.label(index), truth(index))
            advance(1)
    report = compute_report(confusion, manifest.class_names, manifest.base_classes, manifest.novel_classes,
                            num_images=preds.count(), ignored_pixels=confusion.ignored_pixels)
    out = Path(out) if out is not None else Path(predictions).with_name(Path(predictions).stem + ".metrics.zarr")
    inputs = Inputs(artifacts={
        "predictions": ArtifactRef(path=str(Path(predictions).absolute()), kind="predictions", digest=preds.digest),
        "split": ArtifactRef(path=str(Path(split).absolute()), kind="split", digest=split_artifact.digest),
    })
    with staged_artifact(out, kind="metrics", inputs=inputs) as staging:
        import zarr

        group = zarr.open_group(store=str(staging), mode="w", zarr_format=3)
        counts = confusion.counts
        group.create_array(name="confusion", shape=counts.shape, dtype="int64", chunks=counts.shape,
                           compressors=COMPRESSORS)
        group["confusion"][...] = counts
        if chart:
            write_png(staging / CHART_FILE, iou_bar_chart(report))
        metrics = MetricsManifest(
            inputs=inputs, params=EvalParams(subset=subset), summary=report,
            arrays={"confusion": ArraySpec(shape=list(counts.shape), dtype="int64")},
            provenance=Provenance(command=list(sys.argv), host=socket.gethostname()),
            class_names=manifest.class_names, base_classes=manifest.base_classes,
            novel_classes=manifest.novel_classes,
        )
        metrics, digest = publish(staging, out, metrics)
    return EvalResult(metrics, digest, out)


def confusion_of(path: Path) -> np.ndarray:
    """The (K, K+1) confusion counts stored in a metrics artifact (last column: misses)."""
    from simformer_cli.artifacts.inventory import read_stored
    from simformer_cli.artifacts.store import open_artifact

    _, _, group = open_artifact(path, MetricsManifest)
    return read_stored(group["confusion"])
