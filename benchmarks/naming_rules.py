"""How should a trained one-stage model's scores be turned into novel pseudo labels? A diagnostic
for naming novel classes that appear together.

On the split's training images (scored against the full labels the split keeps for audit, never
read by training), every pixel without base ground truth takes one of its image's novel classes by
each rule below, and the table gives the novel IoUs of each rule over those pixels:

    argmax      the best-scoring novel class of the image (``pseudolabel --among image``)
    per-image   each class's scores divided by its own maximum in the image first: every class of
                the image label claims the pixels it scores best, however low its scores are
    quantile    each class's scores replaced by their quantile among that class's scores on every
                non-base pixel of the images that have it: a class that scores high everywhere
                no longer wins everywhere

    python benchmarks/naming_rules.py --model W/split0/train0/simformer.zarr --split W/split0/split.zarr

Prints a table (no BENCHMARKS.md section: it explains a row of the quality tables, it is not one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.inference.predict import predict_scores
from simformer_cli.pipeline.stage import load_model
from simformer_cli.settings.test_time import TestTimeSettings

SAMPLE = 50_000  # scores per class kept for its quantiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--every", type=int, default=1, help="use every N-th training image")
    args = parser.parse_args()
    split = SplitArtifact(args.split)
    manifest = split.manifest
    novel = np.array(manifest.novel_classes)
    names = manifest.class_names
    model, model_manifest, _ = load_model(args.model)
    model.eval()
    test_time = TestTimeSettings.from_training(model_manifest.params.settings.augment, (1.0,), False)
    full = split.full_labels("train")
    present = split.image_labels("train")[:, novel]  # (N, novel)
    rng = np.random.default_rng(0)
    records = []  # (scores of the image's novel classes over its open pixels, their columns, truth there)
    pooled: list[list[np.ndarray]] = [[] for _ in novel]
    for index in range(0, split.count("train"), args.every):
        columns = np.flatnonzero(present[index])
        if not len(columns):
            continue
        open_pixels = split.label("train", index) == manifest.ignore_index
        scores = predict_scores(model, [split.image("train", index)], test_time, torch.device("cpu"))[0].numpy()
        values = scores[novel[columns]][:, open_pixels]  # (classes of the image, open pixels)
        records.append((values, columns, full(index)[open_pixels]))
        for row, column in enumerate(columns):
            pooled[column].append(rng.choice(values[row], size=min(2000, values.shape[1]), replace=False))
    quantiles = [np.sort(np.concatenate(p))[:: max(1, sum(map(len, p)) // SAMPLE)] if p else np.zeros(1) for p in pooled]

    def rule_argmax(values: np.ndarray, columns: np.ndarray) -> np.ndarray:
        return values

    def rule_per_image(values: np.ndarray, columns: np.ndarray) -> np.ndarray:
        return values / np.maximum(values.max(1, keepdims=True), 1e-6)

    def rule_quantile(values: np.ndarray, columns: np.ndarray) -> np.ndarray:
        return np.stack([np.searchsorted(quantiles[c], v) / len(quantiles[c]) for v, c in zip(values, columns)])

    rules = {"argmax": rule_argmax, "per-image": rule_per_image, "quantile": rule_quantile}
    print(f"{args.model}: {len(records)} training images with novel classes; IoU over pixels without base ground truth")
    print("| rule | " + " | ".join(names[c] for c in novel) + " | novel mIoU |")
    print("|---|" + "---|" * (len(novel) + 1))
    for name, rule in rules.items():
        hits, unions = np.zeros(len(novel)), np.zeros(len(novel))
        for values, columns, truth in records:
            chosen = novel[columns[rule(values, columns).argmax(0)]]
            scored = truth != manifest.ignore_index
            for k, cls in enumerate(novel):
                predicted, actual = (chosen == cls) & scored, truth == cls
                hits[k] += (predicted & actual).sum()
                unions[k] += (predicted | actual).sum()
        ious = 100 * hits / np.maximum(unions, 1)
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in ious) + f" | {ious.mean():.1f} |")


if __name__ == "__main__":
    main()
