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
    clusters    naming by elimination over whole clusters: the open pixels' mask features of all
                training images are grouped by k-means (``--clusters`` groups), and a group is
                unlike class n as far as its pixels lie in images whose label lacks n, against what
                the open pixels of all images do. A pixel takes the image's class its group is least
                unlike (``quantile`` breaks ties)
    clusters x quantile
                quantile x (1 - how unlike n the pixel's group is)
    clusters, evidence in images
                the same groups, each named by counting images instead of pixels: the log-likelihood
                ratio of "the group is n" (it would appear in images lacking n only by stray
                pixels) against "it is not" (it would appear there as often as elsewhere)
    clusters, consistent with the image labels
                the same groups, named all at once: of every naming of the groups, the one under
                which the groups appearing in each training image best match its label (a class of
                the label that no appearing group carries costs 1, an appearing group carrying a
                class the label lacks costs 1)
    clusters, true majority (a ceiling)
                each group named after the novel class most of its pixels truly are (audit labels):
                what naming whole groups could reach with these features

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
from simformer_cli.inference.groups import appearances, group_evidence, kmeans
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
    parser.add_argument("--clusters", type=int, default=12, help="k-means groups of the clusters rules")
    parser.add_argument("--appears", type=float, default=0.02,
                        help="a group appears in an image where it holds this share of its open pixels")
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
    features = open_features(split, model, test_time)
    alikeness = absent_alikeness(split, features)
    unlike_absent = ranking_rule(
        lambda index, c, scores: quantile_of(quantiles[c], scores[c]) * (1 - alikeness(index, c)))
    grouped = group_namings(split, features, args.clusters, full, args.appears)

    def group_rule(name: str):  # noqa: ANN202
        """Each open pixel takes the class its group's naming ``name`` scores highest; quantile breaks ties."""
        return ranking_rule(lambda index, c, scores: grouped[name](index, c) + 1e-3 * quantile_of(quantiles[c], scores[c]))

    cluster_quantile = ranking_rule(
        lambda index, c, scores: quantile_of(quantiles[c], scores[c]) * grouped["alike"](index, c))

    rules = {"image": image_rule, "per-image": image_rule,
             "quantile": PseudoLabelRule(split, None, "quantile", quantiles), "tail (true shares)": tail,
             "unlike-absent": unlike_absent, "clusters": group_rule("alike"), "clusters x quantile": cluster_quantile,
             "clusters, evidence in images": group_rule("evidence"),
             "clusters, consistent with the image labels": group_rule("consistent"),
             "clusters, true majority (a ceiling)": group_rule("majority")}
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
def open_features(split, model, test_time):
    """Per training image: its mask features on the stride-4 grid (unit length, (C, h, w)), which
    grid cells are open (no base ground truth), and the image's size."""
    ignore = split.manifest.ignore_index
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
    return features, open_grid, sizes


def to_image(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(grid[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]


@torch.no_grad()
def absent_alikeness(split, open_features_):
    """``alikeness(index, c)`` -> (H, W): each pixel's largest cosine similarity to the open pixels
    of the training images lacking class c, as a quantile (0..1) among the same similarities over
    the open pixels of the training images that have c."""
    manifest = split.manifest
    novel = [int(c) for c in manifest.novel_classes]
    labels = split.image_labels("train")
    features, open_grid, sizes = open_features_
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
        return to_image(quantile_of(tables[c], grid_alike(index, c)), sizes[index])

    return alikeness


#: Open-pixel features per image that the k-means sees.
KMEANS_PER_IMAGE = 256


@torch.no_grad()
def group_namings(split, open_features_, clusters: int, full, appears: float):
    """Group the open pixels of all training images by k-means on their mask features, name the
    groups four ways, and return each naming as ``name -> f(index, c) -> (H, W)``, the score of
    class c at each pixel of a training image (that of the pixel's group):

    - ``alike``: 1 - the share of the group's open pixels that lie in images whose label lacks c,
      over the same share for all open pixels (capped at 1): a group of class c has none there (1),
      a group of another class about as many as everything else (0);
    - ``evidence``: :func:`group_evidence`; ``consistent``: :func:`consistent_naming` (1 for the
      group's class, else 0);
    - ``majority``: 1 for the novel class most of the group's pixels truly are (the audit labels;
      a ceiling, not a rule a user could run).

    Prints each group's size, its true classes and its scores."""
    manifest = split.manifest
    novel = [int(c) for c in manifest.novel_classes]
    present = split.image_labels("train")[:, novel]
    features, open_grid, sizes = open_features_
    pool = torch.cat([f[:, o].T[:: max(1, -(-int(o.sum()) // KMEANS_PER_IMAGE))]
                      for f, o in zip(features, open_grid) if o.any()])
    centers = kmeans(pool, clusters)
    groups = []
    mass = np.zeros((clusters, len(features)))
    for index, (f, o) in enumerate(zip(features, open_grid)):
        group = (f.flatten(1).T @ centers.T).argmax(1).reshape(f.shape[1:])
        groups.append(group)
        mass[:, index] = np.bincount(group[o].numpy(), minlength=clusters)
    unlike = np.ones((clusters, len(novel)))
    for k in range(len(novel)):
        lacking = ~present[:, k]
        everyone = mass[:, lacking].sum() / max(mass.sum(), 1)
        if everyone > 0:
            unlike[:, k] = np.minimum(1.0, mass[:, lacking].sum(1) / np.maximum(mass.sum(1), 1) / everyone)
    found = mass.sum(0) > 0  # the images with open pixels: only they can tell anything
    seen, labelled = appearances(mass[:, found], appears), present[found]
    evidence = group_evidence(seen, labelled)
    truth = group_truth(split, groups, open_grid, full, clusters)
    describe_groups(split, truth, mass, unlike, evidence)
    one_hot = np.eye(len(novel))
    tables = {"alike": 1 - unlike, "evidence": evidence, "consistent": one_hot[consistent_naming(seen, labelled)],
              "majority": one_hot[truth[:, novel].argmax(1)]}

    def per_pixel(table: np.ndarray):  # noqa: ANN202
        return lambda index, c: to_image(torch.from_numpy(table[:, novel.index(c)])[groups[index]], sizes[index])

    return {name: per_pixel(table) for name, table in tables.items()}


#: Namings of the groups tried one by one at most (3 classes, 12 groups: 531,441).
MAX_NAMINGS = 600_000


def consistent_naming(seen: np.ndarray, present: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """The novel class of each group (index into the novel classes) under which the groups that
    appear in each image best match its image-level label: every class of the label should be
    named by a group that appears there (a miss costs 1), and no group that appears should carry a
    class the label lacks (each costs 1). Every naming is tried (classes ** groups of them)."""
    seen = seen.astype(np.int32)  # (groups, images)
    labels = present.astype(np.int32)  # (images, classes)
    groups, classes = seen.shape[0], labels.shape[1]

    def cost_of(naming: np.ndarray) -> int:
        named = np.zeros((seen.shape[1], classes), dtype=bool)
        for group, cls in enumerate(naming):
            named[:, cls] |= seen[group] > 0
        return int((labels.astype(bool) & ~named).sum() + (seen * (1 - labels[:, naming].T)).sum())

    total = classes ** groups
    if total > MAX_NAMINGS:  # too many to try: change one group's class at a time while that helps
        best = np.zeros(groups, dtype=int)
        improved = True
        while improved:
            improved = False
            for group in range(groups):
                for cls in range(classes):
                    trial = best.copy()
                    trial[group] = cls
                    if cost_of(trial) < cost_of(best):
                        best, improved = trial, True
        return best
    best, best_cost = None, np.inf
    for start in range(0, total, chunk):
        codes = np.arange(start, min(total, start + chunk))
        naming = (codes[:, None] // classes ** np.arange(groups)[None, :]) % classes  # (namings, groups)
        onehot = np.eye(classes, dtype=np.int32)[naming]  # (namings, groups, classes)
        named = np.einsum("agc,gi->aic", onehot, seen) > 0  # (namings, images, classes): class named there
        misses = (labels[None] & ~named).sum((1, 2))
        strays = np.einsum("agc,gi,ic->a", onehot, seen, 1 - labels)
        cost = misses + strays
        at = int(cost.argmin())
        if cost[at] < best_cost:
            best, best_cost = naming[at], cost[at]
    return best


def group_truth(split, groups, open_grid, full, clusters: int) -> np.ndarray:
    """(groups, classes + 1): how many open grid cells of each group are of each true class (the
    audit labels; the last column is unlabelled)."""
    names, ignore = split.manifest.class_names, split.manifest.ignore_index
    counts = np.zeros((clusters, len(names) + 1))
    for index, group in enumerate(groups):
        truth = torch.from_numpy(full(index).astype(np.int64))[None, None].float()
        small = F.interpolate(truth, size=group.shape, mode="nearest")[0, 0].long()[open_grid[index]]
        small[small == ignore] = len(names)
        np.add.at(counts, (group[open_grid[index]].numpy(), small.numpy()), 1)
    return counts


def describe_groups(split, truth, mass, unlike, evidence) -> None:
    """Print each k-means group's share of the open pixels, its true classes, its unlikeness and
    the evidence that it is each novel class."""
    names, novel = split.manifest.class_names, [int(c) for c in split.manifest.novel_classes]
    novel_names = " / ".join(names[c] for c in novel)
    print("k-means groups of the open pixels (true classes from the audit labels):")
    print("| group | share of open pixels | " + " | ".join(names[c] for c in novel)
          + f" | other | unlike {novel_names} | evidence {novel_names} |")
    print("|---|---|" + "---|" * (len(novel) + 3))
    for k in np.argsort(-mass.sum(1)):
        row = truth[k] / max(truth[k].sum(), 1)
        other = 1 - sum(row[c] for c in novel)
        print(f"| {k} | {100 * mass[k].sum() / max(mass.sum(), 1):.1f}% | "
              + " | ".join(f"{100 * row[c]:.0f}%" for c in novel) + f" | {100 * other:.0f}% | "
              + " / ".join(f"{u:.2f}" for u in unlike[k]) + " | " + " / ".join(f"{e:.0f}" for e in evidence[k]) + " |")
    print()


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
