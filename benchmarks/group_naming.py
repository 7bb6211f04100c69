"""How well do rules name the k-means groups of ``pseudolabel --among groups``, across many models?
A diagnostic for the naming step alone: no retraining.

For each model (with the split it was trained on) the open pixels (no base ground truth) of every
training image are grouped exactly as ``pseudolabel --among groups`` groups them
(``inference.groups.name_groups``), and each group's open cells are counted by their true class
(the split's audit labels, never read by training). Every rule below then names the groups from
the image-level labels alone, each open cell takes the named class (among its image's novel
classes) of its group, and the table gives the novel mIoU of those labels over the open cells of
the stride-4 grid (unlabelled "void" cells are not scored, as in the pseudo-label audit), and the
share of the void cells the rule labels with a novel class:

    evidence            the stage's rule: log-likelihood ratio of "the group is n" (it appears in
                        images lacking n only at the stray rate) against "it appears there as often
                        as in the images that have n"
    evidence, unnamed ignore
                        the same, cells of groups without positive evidence for any class of their
                        image left unlabelled (``--unnamed ignore``; those cells count as missed)
    uniform null        "it is not n" as any rate of appearance in the images lacking n (uniform
                        prior) instead of the rate in the images that have n
    evidence ranks      each class's evidence ranked among the groups before comparing classes
    true majority       each group named after the novel class most of its cells are (a ceiling)

    python benchmarks/group_naming.py --model M1 --split S1 [--model M2 --split S2 ...] [--groups 12] [--appears 0.1]

``--describe`` also prints each model's groups: share of the open cells, true make-up, the
stage's evidence and the class it names them after.

Prints a table (no BENCHMARKS.md section: it explains rows of the quality tables).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.special import betaln

from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.devices import start_runtime
from simformer_cli.inference.groups import STRAY, appearances, group_evidence, label_on_grid, name_groups, open_cells
from simformer_cli.pipeline.stage import load_model
from simformer_cli.progress import SilentReporter
from simformer_cli.settings.test_time import TestTimeSettings


def cell_counts(model: Path, split_path: Path, groups: int, appears: float) -> tuple[np.ndarray, np.ndarray]:
    """(images, groups, novel classes + 1) open cells of each group by true class (the last column:
    any other label, void included), and the (images, novel classes) image-level labels."""
    runtime = start_runtime("cpu")
    network, manifest, _ = load_model(model, runtime.device)
    split = SplitArtifact(split_path)
    test_time = TestTimeSettings.from_training(manifest.params.settings.augment, (1.0,), False)
    naming = name_groups(split, network, test_time, runtime, SilentReporter(), groups, appears)
    novel, full, ignore = naming.novel_classes, split.full_labels("train"), split.manifest.ignore_index
    counts = np.zeros((split.count("train"), groups, len(novel) + 1))
    for index, grid in enumerate(naming.maps):
        truth = label_on_grid(full(index), grid.shape).numpy()
        open_ = open_cells(split.label("train", index), ignore, grid.shape).numpy()
        for column, cls in enumerate([*novel, None]):
            where = open_ & (~np.isin(truth, novel) if cls is None else truth == cls)
            counts[index, :, column] = np.bincount(grid[where], minlength=groups)
    return counts, split.image_labels("train")[:, novel]


def uniform_null(seen: np.ndarray, present: np.ndarray, stray: float = STRAY) -> np.ndarray:
    """Log-likelihood ratio of "the group is n" against "it appears in the images lacking n at any
    rate" (uniform prior over the rate)."""
    evidence = np.zeros((len(seen), present.shape[1]))
    for n in range(present.shape[1]):
        lacking = ~present[:, n]
        if not lacking.any() or lacking.all():
            continue
        hits, misses = seen[:, lacking].sum(1), (~seen[:, lacking]).sum(1)
        evidence[:, n] = hits * np.log(stray) + misses * np.log(1 - stray) - betaln(1 + hits, 1 + misses)
    return evidence


def ranks(evidence: np.ndarray) -> np.ndarray:
    return evidence.argsort(0).argsort(0) / max(len(evidence) - 1, 1)


def score(counts: np.ndarray, present: np.ndarray, evidence: np.ndarray, unnamed_ignore: bool = False) -> tuple:
    """(novel mIoU, share of void cells labelled) of the labels the group naming ``evidence`` gives."""
    classes = present.shape[1]
    hits, false, missed = np.zeros(classes), np.zeros(classes), np.zeros(classes)
    void_labelled = 0.0
    for index in range(len(counts)):
        cells, allowed = counts[index], np.flatnonzero(present[index])
        if not len(allowed):
            missed += cells[:, :classes].sum(0)
            continue
        table = evidence[:, allowed]
        named = allowed[table.argmax(1)]
        kept = table.max(1) > 0 if unnamed_ignore else np.ones(len(named), dtype=bool)
        for group in range(len(cells)):
            label = named[group] if kept[group] else None
            for cls in range(classes):
                if label == cls:
                    hits[cls] += cells[group, cls]
                else:
                    missed[cls] += cells[group, cls]
            if label is not None:
                false[label] += cells[group, :classes].sum() - cells[group, label]
                void_labelled += cells[group, classes]
    iou = 100 * hits / np.maximum(hits + false + missed, 1)
    return float(iou.mean()), void_labelled / max(counts[:, :, classes].sum(), 1)


def describe(model: Path, split: Path, counts: np.ndarray, evidence: np.ndarray) -> None:
    manifest = SplitArtifact(split).manifest
    novel = [manifest.class_names[c] for c in manifest.novel_classes]
    totals = counts.sum(0)
    print(f"{model}: groups by share of the open cells; make-up ({' / '.join(novel)} / other); evidence; named")
    for group in np.argsort(-totals.sum(1)):
        make_up = " / ".join(f"{x:.0%}" for x in totals[group] / max(totals[group].sum(), 1))
        print(f"  group {group}: {totals[group].sum() / totals.sum():.1%}; {make_up}; "
              + ", ".join(f"{n} {e:+.0f}" for n, e in zip(novel, evidence[group]))
              + f"; {novel[int(evidence[group].argmax())]}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", required=True)
    parser.add_argument("--split", type=Path, action="append", required=True, help="one per --model, in order")
    parser.add_argument("--groups", type=int, default=12)
    parser.add_argument("--appears", type=float, default=0.1)
    parser.add_argument("--describe", action="store_true", help="print each model's groups")
    args = parser.parse_args()
    if len(args.model) != len(args.split):
        raise SystemExit("give one --split per --model")
    rules: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "evidence (the stage's rule)": group_evidence, "evidence, unnamed ignore": group_evidence,
        "uniform null": uniform_null, "evidence ranks": lambda seen, present: ranks(group_evidence(seen, present))}
    results: dict[str, list[tuple]] = {name: [] for name in [*rules, "true majority (a ceiling)"]}
    for model, split in zip(args.model, args.split):
        counts, present = cell_counts(model, split, args.groups, args.appears)
        mass = counts.sum(2).T
        found = mass.sum(0) > 0
        seen = appearances(mass[:, found], args.appears)
        if args.describe:
            describe(model, split, counts, group_evidence(seen, present[found]))
        for name, rule in rules.items():
            results[name].append(score(counts, present, rule(seen, present[found]),
                                       unnamed_ignore=name.endswith("ignore")))
        totals = counts.sum(0)[:, :-1]
        majority = np.zeros_like(totals)
        majority[np.arange(len(totals)), totals.argmax(1)] = 1
        results["true majority (a ceiling)"].append(score(counts, present, majority))
    print(f"Groups {args.groups}, appears {args.appears}; novel mIoU of the open cells (share of void cells labelled).\n")
    print("| rule | " + " | ".join(f"model {k + 1}" for k in range(len(args.model))) + " | mean |")
    print("|---|" + "---|" * (len(args.model) + 1))
    for name, values in results.items():
        cells = " | ".join(f"{miou:.1f} ({void:.0%})" for miou, void in values)
        print(f"| {name} | {cells} | {np.mean([miou for miou, _ in values]):.1f} |")
    print("\n" + "\n".join(f"model {k + 1}: {m} (split {s})" for k, (m, s) in enumerate(zip(args.model, args.split))))


if __name__ == "__main__":
    main()
