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
    unlike-absent
                naming by elimination at labelling time: a pixel that looks like the open pixels
                of training images whose label lacks class n is unlikely to be n. Its alikeness
                to n is its largest cosine similarity (the model's mask features) to a memory of
                open-pixel features from those images, ranked among the alikeness of the images
                that have n; the class is chosen by quantile x (1 - that rank)

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
import torch.nn.functional as F

from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.devices import start_runtime
from simformer_cli.inference.predict import MaskFormerScorer
from simformer_cli.inference.pseudolabel import PseudoLabelRule, class_quantiles, quantile_of
from simformer_cli.model import SIZE_DIVISOR, normalize_images
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

    def ranking_rule(rank):  # noqa: ANN001, ANN202
        """A rule giving each open pixel the image's novel class c with the largest rank(index, c, scores)."""
        def rule(index: int, scores: torch.Tensor) -> np.ndarray:
            classes = novel[present[index]]
            ranked = torch.stack([rank(index, c, scores) for c in classes])
            label = split.label("train", index).copy()
            open_pixels = label == ignore
            label[open_pixels] = classes[ranked.argmax(0).numpy()][open_pixels]
            return label
        return rule

    tail = ranking_rule(lambda index, c, scores: (quantile_of(quantiles[c], scores[c]) - (1 - shares[c])) / shares[c])
    alikeness = absent_alikeness(split, model, test_time)
    unlike_absent = ranking_rule(
        lambda index, c, scores: quantile_of(quantiles[c], scores[c]) * (1 - alikeness(index, c)))

    rules = {"image": image_rule, "per-image": image_rule,
             "quantile": PseudoLabelRule(split, None, "quantile", quantiles), "tail (true shares)": tail,
             "unlike-absent": unlike_absent}
    hits, unions = {name: np.zeros(len(novel)) for name in rules}, {name: np.zeros(len(novel)) for name in rules}
    confusion = {name: np.zeros((len(novel), len(novel))) for name in rules}  # true novel class x chosen one
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
                confusion[name][k] += [(chosen[truth == cls] == other).sum() for other in novel]
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
    print("\nShare of each novel class's pixels (rows) that each rule names each novel class (columns), %:")
    for name in rules:
        shares_of = 100 * confusion[name] / np.maximum(confusion[name].sum(1, keepdims=True), 1)
        print(f"{name}: " + "; ".join(f"{manifest.class_names[c]} -> " + " ".join(f"{v:.0f}" for v in row)
                                      for c, row in zip(novel, shares_of)))


#: Open-pixel features kept per training image for the memories, and per class memory.
MEMORY_PER_IMAGE, MEMORY_SIZE = 64, 4096


@torch.no_grad()
def absent_alikeness(split, model, test_time):
    """``alikeness(index, c)`` -> (H, W): each pixel's largest cosine similarity to the open pixels
    of the training images lacking class c, as a quantile (0..1) among the same similarities over
    the open pixels of the training images that have c."""
    manifest = split.manifest
    novel, ignore = [int(c) for c in manifest.novel_classes], manifest.ignore_index
    labels = split.image_labels("train")
    features, open_grid, sizes = [], [], []
    for index in range(split.count("train")):
        image = split.image("train", index)
        height, width = image.shape[:2]
        vh, vw = test_time.view_size(height, width)
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        view = F.interpolate(tensor, size=(vh, vw), mode="bilinear", align_corners=False)
        ph, pw = -(-vh // SIZE_DIVISOR) * SIZE_DIVISOR, -(-vw // SIZE_DIVISOR) * SIZE_DIVISOR
        grid = model(F.pad(normalize_images(view), (0, pw - vw, 0, ph - vh)))["mask_features"][0]
        grid = F.normalize(grid[:, : -(-vh // 4), : -(-vw // 4)].float(), dim=0)
        label = torch.from_numpy(split.label("train", index).astype(np.int64))[None, None].float()
        small = F.interpolate(label, size=grid.shape[1:], mode="nearest")[0, 0] == ignore
        features.append(grid)
        open_grid.append(small)
        sizes.append((height, width))
    memories = {}
    for c in novel:
        parts = []
        for index in np.flatnonzero(~labels[:, c]):
            values = features[index][:, open_grid[index]].T
            step = max(1, -(-len(values) // MEMORY_PER_IMAGE))
            parts.append(values[::step])
        pooled = torch.cat(parts) if parts else torch.zeros(0, features[0].shape[0])
        memories[c] = pooled[:: max(1, -(-len(pooled) // MEMORY_SIZE))]

    def grid_alike(index: int, c: int) -> torch.Tensor:
        grid = features[index]
        flat = grid.flatten(1).T  # (h*w, C)
        return (flat @ memories[c].T).amax(1).reshape(grid.shape[1:])

    tables = {}
    for c in novel:
        pooled = [grid_alike(i, c)[open_grid[i]] for i in np.flatnonzero(labels[:, c])]
        values = np.sort(torch.cat(pooled).numpy()) if pooled else np.zeros(1)
        tables[c] = values[np.linspace(0, len(values) - 1, min(len(values), 4096)).round().astype(int)].astype(np.float64)

    def alikeness(index: int, c: int) -> torch.Tensor:
        ranked = quantile_of(tables[c], grid_alike(index, c))
        return F.interpolate(ranked[None, None].float(), size=sizes[index], mode="bilinear", align_corners=False)[0, 0]

    return alikeness


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
