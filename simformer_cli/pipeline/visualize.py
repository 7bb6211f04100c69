"""The ``viz`` command: overlays of predictions (and ground truth, where there is some) as PNGs.

The overlays go into a folder that is written whole or not at all, and only ever replaces an empty
folder or earlier overlays of viz (see :mod:`simformer_cli.artifacts.outputs`).
"""

from __future__ import annotations

from pathlib import Path

from simformer_cli.artifacts.outputs import FolderOutput, plain_file_name
from simformer_cli.artifacts.predictions import PredictionsArtifact
from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.data.images import FolderImages
from simformer_cli.errors import UserError
from simformer_cli.evaluation import encode_png, overlay_triptych, palette
from simformer_cli.progress import Reporter, SilentReporter

VIZ = "viz"


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
        subset = preds.subset_of(split_artifact, split)
        read_image = lambda index: split_artifact.image(subset, index)  # noqa: E731
        truth = split_artifact.full_labels(subset)
    else:
        if images is None:
            raise UserError("viz: these predictions were made on a folder of images; pass it with --images")
        folder = FolderImages(Path(images))
        if folder.fingerprint != manifest.inputs.dataset:
            raise UserError(f"viz: {images} is not the folder (or no longer holds the files) these predictions were made on")
        read_image, truth = folder.image, None
    colours = palette(len(manifest.class_names))
    names = [plain_file_name(name, Path(predictions)) for name in preds.names()]
    count = preds.count() if limit <= 0 else min(limit, preds.count())
    target = FolderOutput(Path(out), VIZ, "simformer's own viz overlays",
                          what_out_holds="viz writes one PNG per image into a folder")
    with target.writing(preds.digest) as staging, reporter.task("drawing overlays", count) as advance:
        for index in range(count):
            image, prediction = read_image(index), preds.label(index)
            if image.shape[:2] != prediction.shape:
                raise UserError(f"viz: image {names[index]} is {image.shape[1]}x{image.shape[0]} but its prediction is "
                                f"{prediction.shape[1]}x{prediction.shape[0]}; rerun infer (with --force) to predict "
                                "on these images again")
            picture = overlay_triptych(image, truth(index) if truth else None, prediction,
                                       manifest.class_names, colours, manifest.ignore_index)
            staging.write(f"{names[index]}.png", encode_png(picture))
            advance(1)
    return [Path(out) / f"{name}.png" for name in names[:count]]
