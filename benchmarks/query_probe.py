"""What each query of a trained MaskFormer says and where its mask is: a diagnostic for naming.

For every query: its mean class distribution over the scored images (the top classes), and for each
novel class the mean of its mask's probability over that class's pixels. A model that finds the
novel region but names it all after one class shows one query saying that class with a mask over
every novel class, and the queries saying the other novel classes with near-empty masks.

    python benchmarks/query_probe.py --model W/split0/train0/simformer.zarr --split W/split0/split.zarr \
        --subset holdout [--every 6]

Prints a table (no BENCHMARKS.md section: it explains a row of the quality tables, it is not one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.model import normalize_images
from simformer_cli.pipeline.stage import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--subset", default="val", help="a subset with full labels")
    parser.add_argument("--every", type=int, default=1, help="score every N-th image")
    args = parser.parse_args()
    split = SplitArtifact(args.split)
    names, novel = split.manifest.class_names, split.manifest.novel_classes
    model, _, _ = load_model(args.model)
    model.eval()
    class_sums: np.ndarray | None = None
    mask_sums = np.zeros((0, len(novel)))
    counts = np.zeros(len(novel))
    images = range(0, split.count(args.subset), args.every)
    for index in images:
        image = torch.from_numpy(np.asarray(split.image(args.subset, index))).permute(2, 0, 1)[None].float()
        label = np.asarray(split.label(args.subset, index))
        with torch.no_grad():
            outputs = model(normalize_images(image))
        probs = outputs["pred_logits"][0].softmax(-1).numpy()
        masks = F.interpolate(outputs["pred_masks"], size=label.shape, mode="bilinear", align_corners=False)[0]
        masks = masks.sigmoid().numpy()
        if class_sums is None:
            class_sums, mask_sums = np.zeros_like(probs), np.zeros((len(probs), len(novel)))
        class_sums += probs
        for column, cls in enumerate(novel):
            where = label == cls
            if where.any():
                mask_sums[:, column] += masks[:, where].mean(1)
                counts[column] += 1
    assert class_sums is not None, "no images scored"
    class_means = class_sums / len(images)
    mask_means = mask_sums / np.maximum(counts, 1)
    labels = [*names, "no object"]
    print(f"{args.model}: {len(images)} {args.subset} images")
    print("| query | says (mean class probability) | " + " | ".join(f"mask on {names[c]}" for c in novel) + " |")
    print("|---|---|" + "---|" * len(novel))
    for query, distribution in enumerate(class_means):
        top = np.argsort(-distribution)[:2]
        says = ", ".join(f"{labels[c]} {distribution[c]:.2f}" for c in top)
        print(f"| {query} | {says} | " + " | ".join(f"{value:.2f}" for value in mask_means[query]) + " |")


if __name__ == "__main__":
    main()
