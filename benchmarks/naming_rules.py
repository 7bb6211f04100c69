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
    tail (true shares)
                as ``quantile``, but each class's quantile q is read against the share f of the
                pixels without base ground truth that the class really covers in the images that
                have it, (q - (1 - f)) / f: how deep into its own top share a pixel is. The shares
                come from the audit labels, so this is a ceiling for the idea, not a rule a user
                could run

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
from simformer_cli.inference.pseudolabel import PseudoLabelRule, class_quantiles, quantile_of
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
    full = split.full_labels("train")
    present = split.image_labels("train")[:, novel]
    shares = true_shares(split, full, present)

    def tail(index: int, scores: torch.Tensor) -> np.ndarray:
        classes = novel[present[index]]
        ranked = torch.stack([(quantile_of(quantiles[c], scores[c]) - (1 - shares[c])) / shares[c] for c in classes])
        label = split.label("train", index).copy()
        open_pixels = label == ignore
        label[open_pixels] = classes[ranked.argmax(0).numpy()][open_pixels]
        return label

    rules = {"image": image_rule, "per-image": image_rule,
             "quantile": PseudoLabelRule(split, None, "quantile", quantiles), "tail (true shares)": tail}
    hits, unions = {name: np.zeros(len(novel)) for name in rules}, {name: np.zeros(len(novel)) for name in rules}
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
    print("true shares of the open pixels: " + ", ".join(f"{manifest.class_names[c]} {shares[c]:.3f}" for c in novel))
    print(f"{args.model}: {len(images)} training images with novel classes; IoU over pixels without base ground truth")
    print("| rule | " + " | ".join(manifest.class_names[c] for c in novel) + " | novel mIoU |")
    print("|---|" + "---|" * (len(novel) + 1))
    for name in rules:
        ious = 100 * hits[name] / np.maximum(unions[name], 1)
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in ious) + f" | {ious.mean():.1f} |")


def true_shares(split, full, present: np.ndarray) -> dict[int, float]:
    """Per novel class, the share of the pixels without base ground truth that it covers, over the
    training images whose label has it (from the audit labels)."""
    manifest = split.manifest
    covered, total = {int(c): 0 for c in manifest.novel_classes}, {int(c): 0 for c in manifest.novel_classes}
    for index in range(split.count("train")):
        open_pixels = split.label("train", index) == manifest.ignore_index
        truth = full(index)[open_pixels]
        for k, c in enumerate(manifest.novel_classes):
            if present[index, k]:
                covered[int(c)] += int((truth == c).sum())
                total[int(c)] += int(open_pixels.sum())
    return {c: max(covered[c], 1) / max(total[c], 1) for c in covered}


if __name__ == "__main__":
    main()
