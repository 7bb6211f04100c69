"""``simformer export``: predictions out of the artifact, for other tools.

- ``coco``: one JSON file in the COCO results style used for semantic segmentation
  (``[{"image_id", "category_id", "segmentation": {"size": [h, w], "counts": "..."}}]``), one
  entry per image and predicted class, masks run-length encoded with pycocotools. ``image_id`` is
  the image's name; ``category_id`` the class id (``categories`` gives the names).
- ``png``: one single-channel PNG per image, pixel value = class id, named after the image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from simformer_cli.errors import UserError
from simformer_cli.inference.store import PredictionsArtifact
from simformer_cli.progress import Reporter, SilentReporter


def coco_entries(name: str, label: np.ndarray, num_classes: int) -> list[dict]:
    entries = []
    for class_id in np.unique(label):
        if class_id >= num_classes:
            continue
        rle = mask_utils.encode(np.asfortranarray(label == class_id, dtype=np.uint8))
        entries.append({"image_id": name, "category_id": int(class_id),
                        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}})
    return entries


def run_export(
    *, predictions: Path, out: Path, format: Literal["coco", "png"], reporter: Reporter | None = None
) -> Path:
    reporter = reporter or SilentReporter()
    preds = PredictionsArtifact(predictions)
    manifest = preds.manifest
    names = preds.names()
    out = Path(out)
    if format == "png" and out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder; PNG export writes one file per image into a folder")
    if format == "coco" and out.is_dir():
        raise UserError(f"--out {out}: is a folder; COCO export writes one JSON file, e.g. --out results.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    with reporter.task(f"exporting {format}", preds.count()) as advance:
        for index, name in enumerate(names):
            label = preds.label(index)
            if format == "coco":
                results.extend(coco_entries(name, label, len(manifest.class_names)))
            else:
                out.mkdir(parents=True, exist_ok=True)
                Image.fromarray(label).save(out / f"{name}.png")
            advance(1)
    if format == "coco":
        document = {"categories": [{"id": i, "name": n} for i, n in enumerate(manifest.class_names)],
                    "annotations": results}
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(document))
        os.replace(tmp, out)
    return out
