"""The ``viz`` command: overlays of predictions (and ground truth, where there is some) as PNGs."""

from __future__ import annotations

from pathlib import Path

from simformer_cli.data.split_store import SplitArtifact
from simformer_cli.errors import UserError
from simformer_cli.evaluation import overlay_triptych, palette, write_png
from simformer_cli.inference.store import PredictionsArtifact
from simformer_cli.pipeline.evaluate import check_predictions_match, ground_truth_reader
from simformer_cli.pipeline.infer import FolderImages
from simformer_cli.progress import Reporter, SilentReporter


def run_viz(
    *, predictions: Path, out: Path, split: Path | None = None, images: Path | None = None, limit: int = 16,
    reporter: Reporter | None = None,
) -> list[Path]:
    reporter = reporter or SilentReporter()
    preds = PredictionsArtifact(predictions)
    manifest = preds.manifest
    if manifest.params.source == "split":
        if split is None:
            raise UserError("viz: these predictions were made on a split; pass it with --split")
        split_artifact = SplitArtifact(split)
        subset = check_predictions_match(preds, split_artifact, split)
        read_image = lambda index: split_artifact.image(subset, index)  # noqa: E731
        truth = ground_truth_reader(split_artifact, subset)
    else:
        if images is None:
            raise UserError("viz: these predictions were made on a folder of images; pass it with --images")
        folder = FolderImages(Path(images))
        if folder.fingerprint != manifest.inputs.dataset:
            raise UserError(f"viz: {images} is not the folder (or no longer holds the files) these predictions were made on")
        read_image, truth = folder.image, None
    colours = palette(len(manifest.class_names))
    names = preds.names()
    count = preds.count() if limit <= 0 else min(limit, preds.count())
    written = []
    with reporter.task("drawing overlays", count) as advance:
        for index in range(count):
            picture = overlay_triptych(read_image(index), truth(index) if truth else None, preds.label(index),
                                       manifest.class_names, colours, manifest.ignore_index)
            written.append(write_png(Path(out) / f"{names[index]}.png", picture))
            advance(1)
    return written
