"""Does a trained model name the segments whose masks it finds? Usage::

    python benchmarks/naming_check.py MODEL SPLIT [--images 60]

For each ground-truth segment of the first val images: the query whose binarised mask fits it best
(IoU), that IoU, and whether the query's most likely real class (no-object left out) is the
segment's class. Low mask IoU points at the pixel side; good masks with wrong names point at the
queries' classification (what the tiny preset's decoder change fixed, BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.model.maskformer import normalize_images
from simformer_cli.pipeline.stage import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("split", type=Path)
    parser.add_argument("--images", type=int, default=60)
    args = parser.parse_args()
    split = SplitArtifact(args.split)
    network, _, _ = load_model(args.model)
    ious, named = [], 0
    with torch.no_grad():
        for index in range(min(args.images, split.count("val"))):
            image, label = split.image("val", index), split.label("val", index)
            outputs = network(normalize_images(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]))
            masks = F.interpolate(outputs["pred_masks"], size=label.shape, mode="bilinear")[0] > 0
            classes = outputs["pred_logits"][0, :, :-1].argmax(-1)
            for c in np.unique(label):
                if c == split.manifest.ignore_index:
                    continue
                truth = torch.from_numpy(label == c)
                iou = (masks & truth).sum((1, 2)) / (masks | truth).sum((1, 2)).clamp(min=1)
                best = int(iou.argmax())
                ious.append(float(iou[best]))
                named += int(classes[best]) == int(c)
    print(f"{args.model}: {len(ious)} segments; best query's mask IoU {np.mean(ious):.3f}; "
          f"its class right for {named / len(ious):.1%}")


if __name__ == "__main__":
    main()
