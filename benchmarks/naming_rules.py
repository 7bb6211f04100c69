"""How should a trained one-stage model's scores be turned into novel pseudo labels? A diagnostic
for naming novel classes that appear together.

On the split's training images (scored against the full labels the split keeps for audit, never
read by training), every pixel without base ground truth takes one of its image's novel classes by
each rule below, and the table gives the novel IoUs of each rule over those pixels:

    image       the best-scoring novel class of the image (``pseudolabel --among image``)
    per-image   each class's scores divided by its own maximum over the image's pixels without base
                ground truth first, then as ``image``: every class of the image label claims the
                pixels it scores best, however low its scores are (a diagnostic only)
    quantile    ``pseudolabel --among quantile``: each class's scores ranked among that class's
                scores on the training images that have it

The ``image`` and ``quantile`` labels are the ``pseudolabel`` stage's own rule
(``inference.pseudolabel``), so the figures are those of the pseudo labels it would write.

    python benchmarks/naming_rules.py --model W/split0/train0/simformer.zarr --split W/split0/split.zarr [--every 2]

Prints a table (no BENCHMARKS.md section: it explains a row of the quality tables, it is not one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.devices import start_runtime
from simformer_cli.inference.predict import MaskFormerScorer
from simformer_cli.inference.pseudolabel import PseudoLabelRule, class_quantiles
from simformer_cli.pipeline.stage import load_model
from simformer_cli.progress import SilentReporter
from simformer_cli.settings.test_time import TestTimeSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--every", type=int, default=1, help="score every N-th training image (the quantiles use all)")
    args = parser.parse_args()
    split = SplitArtifact(args.split)
    manifest = split.manifest
    novel, ignore = np.array(manifest.novel_classes), manifest.ignore_index
    model, model_manifest, _ = load_model(args.model)
    model.eval()
    test_time = TestTimeSettings.from_training(model_manifest.params.settings.augment, (1.0,), False)
    scorer = MaskFormerScorer(model, test_time, start_runtime("cpu"))
    quantiles = class_quantiles(split, scorer, SilentReporter())
    image_rule = PseudoLabelRule(split, None, "image")
    rules = {"image": image_rule, "per-image": image_rule, "quantile": PseudoLabelRule(split, None, "quantile", quantiles)}
    hits, unions = {name: np.zeros(len(novel)) for name in rules}, {name: np.zeros(len(novel)) for name in rules}
    full = split.full_labels("train")
    present = split.image_labels("train")[:, novel]
    images = [i for i in range(0, split.count("train"), args.every) if present[i].any()]
    for index in images:
        scores = scorer([index], [split.image("train", index)])[0]
        open_pixels = split.label("train", index) == ignore
        truth = full(index)[open_pixels]
        scored = truth != ignore
        peaks = scores[:, torch.from_numpy(open_pixels)].amax(1).clamp_min(1e-6)
        for name, rule in rules.items():
            chosen = rule(index, scores / peaks[:, None, None] if name == "per-image" else scores)[open_pixels]
            for k, cls in enumerate(novel):
                predicted, actual = (chosen == cls) & scored, truth == cls
                hits[name][k] += (predicted & actual).sum()
                unions[name][k] += (predicted | actual).sum()
    print(f"{args.model}: {len(images)} training images with novel classes; IoU over pixels without base ground truth")
    print("| rule | " + " | ".join(manifest.class_names[c] for c in novel) + " | novel mIoU |")
    print("|---|" + "---|" * (len(novel) + 1))
    for name in rules:
        ious = 100 * hits[name] / np.maximum(unions[name], 1)
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in ious) + f" | {ious.mean():.1f} |")


if __name__ == "__main__":
    main()
