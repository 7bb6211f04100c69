"""``simformer export``: predictions out of the artifact, for other tools.

- ``coco``: one JSON file in the COCO results style used for semantic segmentation
  (``[{"image_id", "category_id", "segmentation": {"size": [h, w], "counts": "..."}}]``), one
  entry per image and predicted class, masks run-length encoded with pycocotools. ``image_id`` is
  the image's name; ``category_id`` the class id (``categories`` gives the names). Where the split
  was read from COCO JSON, both are the annotation file's own ids (the image ids when the
  predictions were made on that split and it is still there), so the file goes back into the
  annotation tool, or into pycocotools' ``loadRes``, as it is. ``info`` (first)
  names simformer and the predictions' digest: that is how a later export knows the file is its own.
- ``png``: one single-channel PNG per image, pixel value = class id, named after the image.

Neither overwrites anything simformer did not write, nor leaves a half-written file: see
:mod:`simformer_cli.artifacts.outputs`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from simformer_cli.artifacts.outputs import FolderOutput, check_coco_out, coco_document, plain_file_name, write_file
from simformer_cli.artifacts.predictions import PredictionsArtifact
from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.errors import UserError
from simformer_cli.progress import Reporter, SilentReporter

PNG_EXPORT = "export-png"


def coco_entries(name: str | int, label: np.ndarray, category_ids: list[int]) -> list[dict]:
    """One entry per predicted class; ``category_ids[c]`` is class c's id in the dataset."""
    num_classes = len(category_ids)
    entries = []
    for class_id in np.unique(label):
        if class_id >= num_classes:
            continue
        rle = mask_utils.encode(np.asfortranarray(label == class_id, dtype=np.uint8))
        entries.append({"image_id": name, "category_id": category_ids[int(class_id)],
                        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}})
    return entries


def source_image_ids(preds: PredictionsArtifact, reporter: Reporter) -> list[int] | None:
    """The COCO file's image ids of the predicted images, read from the split they were made on;
    None (image names are written) for a folder of images, or when that split is gone or rebuilt."""
    ref = preds.manifest.inputs.artifacts.get("split")
    if preds.manifest.params.source != "split" or ref is None:
        return None
    try:
        split = SplitArtifact(Path(ref.path))
    except UserError:
        split = None
    if split is None or split.digest != ref.digest:
        reporter.info(f"warning: {ref.path}: not the split these predictions were made on any more; "
                      "image_id holds image names instead of the annotation file's ids")
        return None
    return split.source_image_ids(preds.manifest.params.subset or "val")


def label_png(label: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(label).save(buffer, format="PNG")
    return buffer.getvalue()


def run_export(
    *, predictions: Path, out: Path, format: Literal["coco", "png"], reporter: Reporter | None = None
) -> Path:
    reporter = reporter or SilentReporter()
    preds = PredictionsArtifact(predictions)
    manifest = preds.manifest
    names = [plain_file_name(name, Path(predictions)) for name in preds.names()]
    out = Path(out)
    if format == "coco":
        check_coco_out(out)
        results: list[dict] = []
        # A dataset read from COCO JSON gets its own category ids back (its annotation tool knows them).
        ids = manifest.category_ids or list(range(len(manifest.class_names)))
        image_ids = source_image_ids(preds, reporter) if manifest.category_ids is not None else None
        with reporter.task("exporting coco", preds.count()) as advance:
            for index, name in enumerate(names):
                results.extend(coco_entries(name if image_ids is None else image_ids[index], preds.label(index), ids))
                advance(1)
        categories = [{"id": i, "name": n} for i, n in zip(ids, manifest.class_names)]
        write_file(out, coco_document(preds.digest, categories, results))
        return out
    target = FolderOutput(out, PNG_EXPORT, "simformer's own PNG export",
                          what_out_holds="PNG export writes one file per image into a folder")
    with target.writing(preds.digest) as staging, reporter.task("exporting png", preds.count()) as advance:
        for index, name in enumerate(names):
            staging.write(f"{name}.png", label_png(preds.label(index)))
            advance(1)
    return out
