"""Segmentation figures from a confusion matrix, in both mIoU conventions.

Per class c, from the dataset-level confusion table (rows ground truth, columns prediction, plus
the "prediction not a class" column, see :mod:`simformer_cli.evaluation.confusion`):

* ``gt_pixels``  = labelled pixels whose ground truth is c (misses included);
* ``pred_pixels`` = labelled pixels predicted as c (predictions on ignored pixels never count);
* TP = pixels with both, FP = pred_pixels - TP, FN = gt_pixels - TP;
* ``iou`` = TP / (TP + FP + FN), **None** when TP + FP + FN = 0 (absent from ground truth and
  prediction). A class that is only predicted gets IoU 0 here (the value is exact), unlike
  detectron2's per-class output, which shows NaN for it;
* ``acc`` = TP / gt_pixels, None when the class has no ground-truth pixels.

Means (all in percent, rounded to 4 decimals; computed from unrounded values):

* ``miou`` -- SimFormer's headline convention, identical to detectron2 before 2022-07 (the copy in
  SimFormer's evaluator) and to mmsegmentation: mean IoU over classes with ground-truth pixels
  **or** predicted pixels. A prediction-only class counts with IoU 0; a class absent from both is
  left out. ``evaluated_classes`` is the number of classes in this mean.
* ``miou_present_only`` -- detectron2's convention since 2022-07: mean over classes with
  ground-truth pixels; prediction-only classes are left out.
* ``base_miou`` / ``novel_miou`` -- SimFormer's BaseIoU / NovelIoU: the mean of that group's
  per-class IoUs that are not NaN in its evaluator. Its evaluator sets IoU only for classes with
  ground-truth pixels, so prediction-only classes are **left out** of the group means even though
  they count as 0 in ``miou``; we follow that for parity. Hence ``miou`` is not in general a
  weighted mean of the two group figures.
* ``hiou`` = 2 b n / (b + n) of base_miou and novel_miou; 0 when either is 0.
* When a group has no class with ground-truth pixels (a small evaluation subset), its mean is
  **None** (SimFormer's evaluator gives NaN there) and so is ``hiou``: 0 would read as a model
  that failed on the group, which was never measured. A warning says so.
* ``pixel_accuracy`` = sum TP / sum gt_pixels; ``mean_accuracy`` = mean ``acc`` over classes with
  ground-truth pixels; ``fwiou`` = sum over those classes of gt_pixels / total * IoU.

Finding and naming the novel classes apart (``novel``, None when no novel class has ground-truth
pixels). A weak-shot model can find the novel regions yet give them the wrong novel names (novel
classes that appear together in the same images have nearly the same image-level labels):

* ``union_iou`` -- IoU of the union of the novel classes, whatever novel name a pixel got: found;
* ``renamed_miou`` -- novel mIoU under the best one-to-one renaming of the predicted novel classes
  (Hungarian assignment maximising the sum of IoUs; the novel_miou convention otherwise), so
  ``renamed_miou - novel_miou`` is what the naming costs;
* ``confusion`` -- per novel class with ground-truth pixels, the share (percent) of its pixels
  predicted as each novel class, as any base class, and as nothing (not a class id).

A table without any labelled pixel has nothing to evaluate and is refused with ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from simformer_cli.artifacts.metrics import ClassResult, EvalReport, NovelConfusion, NovelDiagnostics
from simformer_cli.evaluation.confusion import ConfusionMatrix

# Above this share of ignored ground-truth pixels the figures describe a small, possibly
# unrepresentative part of the images (e.g. background mapped to ignore).
IGNORED_SHARE_WARNING = 0.5
DECIMALS = 4
REPORT_COLUMNS = ("id", "class", "role", "IoU", "acc", "GT pixels", "pred pixels")


def _percent(value: float) -> float:
    return round(100.0 * float(value), DECIMALS)


def _harmonic(base: float | None, novel: float | None) -> float | None:
    if base is None or novel is None:
        return None
    if base == 0.0 or novel == 0.0:
        return 0.0
    return 2.0 * base * novel / (base + novel)


def _check_roles(num_classes: int, class_names: Sequence[str], base: Sequence[int], novel: Sequence[int]) -> None:
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for a {num_classes}-class matrix")
    base_set, novel_set = set(base), set(novel)
    if len(base_set) != len(base) or len(novel_set) != len(novel):
        raise ValueError("base_classes and novel_classes must not repeat ids")
    if base_set & novel_set:
        raise ValueError(f"classes {sorted(base_set & novel_set)} are both base and novel")
    if base_set | novel_set != set(range(num_classes)):
        missing = sorted(set(range(num_classes)) - base_set - novel_set)
        extra = sorted((base_set | novel_set) - set(range(num_classes)))
        raise ValueError(f"base + novel classes must be exactly 0..{num_classes - 1}; missing {missing}, unknown {extra}")


def compute_report(
    matrix: ConfusionMatrix | np.ndarray,
    class_names: Sequence[str],
    base_classes: Sequence[int],
    novel_classes: Sequence[int],
    *,
    num_images: int,
    ignored_pixels: int,
    novel_unscored: str | None = None,
) -> EvalReport:
    """Build the report from a confusion table: a :class:`ConfusionMatrix`, or its saved (K, K)
    or (K, K+1) ``counts`` array. Conventions are in the module docstring. ``novel_unscored``:
    the ground truth has no masks of the novel classes (given as tags), so they get no figures
    (a novel prediction on a base pixel still counts against that base class); the text says why."""
    table = matrix if isinstance(matrix, ConfusionMatrix) else ConfusionMatrix.from_array(matrix)
    k = table.num_classes
    _check_roles(k, class_names, base_classes, novel_classes)
    confusion = table.matrix
    tp = np.diag(confusion).astype(np.float64)
    gt = confusion.sum(axis=1) + table.missed
    pred = confusion.sum(axis=0)
    union = (gt + pred).astype(np.float64) - tp
    total_gt = int(gt.sum())
    if total_gt == 0:
        raise ValueError("nothing to evaluate: no ground-truth pixel is labelled with a class")

    in_gt = gt > 0
    in_union = union > 0
    if novel_unscored is not None:
        in_gt[list(novel_classes)] = False
        in_union[list(novel_classes)] = False
    iou = np.divide(tp, union, out=np.zeros(k), where=in_union)
    acc = np.divide(tp, gt, out=np.zeros(k), where=in_gt)
    base_mask = np.zeros(k, dtype=bool)
    base_mask[list(base_classes)] = True

    def group_mean(selected: np.ndarray) -> float | None:
        return float(iou[selected].mean()) if selected.any() else None

    base_miou = group_mean(in_gt & base_mask)
    novel_miou = group_mean(in_gt & ~base_mask)
    per_class = [
        ClassResult(
            id=c,
            name=class_names[c],
            iou=_percent(iou[c]) if in_union[c] else None,
            acc=_percent(acc[c]) if in_gt[c] else None,
            gt_pixels=int(gt[c]),
            pred_pixels=int(pred[c]),
            split_role="base" if base_mask[c] else "novel",
        )
        for c in range(k)
    ]
    hiou = _harmonic(base_miou, novel_miou)
    return EvalReport(
        miou=_percent(iou[in_union].mean()),
        base_miou=None if base_miou is None else _percent(base_miou),
        novel_miou=None if novel_miou is None else _percent(novel_miou),
        hiou=None if hiou is None else _percent(hiou),
        miou_present_only=_percent(iou[in_gt].mean()),
        pixel_accuracy=_percent(tp.sum() / total_gt),
        mean_accuracy=_percent(acc[in_gt].mean()),
        fwiou=_percent((gt[in_gt] / total_gt * iou[in_gt]).sum()),
        per_class=per_class,
        num_images=num_images,
        evaluated_classes=int(in_union.sum()),
        ignored_pixels=ignored_pixels,
        warnings=_warnings(table, in_union, in_gt, base_mask, total_gt, ignored_pixels, novel_unscored),
        novel=None if novel_unscored is not None else novel_diagnostics(table, class_names, novel_classes),
    )


def novel_diagnostics(table: ConfusionMatrix, class_names: Sequence[str],
                      novel_classes: Sequence[int]) -> NovelDiagnostics | None:
    """Finding vs naming the novel classes, from the confusion table (module docstring)."""
    from scipy.optimize import linear_sum_assignment

    novel = np.asarray(sorted(novel_classes), dtype=np.int64)
    confusion = table.matrix.astype(np.float64)
    gt = confusion.sum(axis=1) + table.missed
    pred = confusion.sum(axis=0)
    present = gt[novel] > 0
    if not present.any():
        return None
    block = confusion[np.ix_(novel, novel)]  # ground truth novel i predicted as novel j
    found = block.sum()
    union_iou = found / (gt[novel].sum() + pred[novel].sum() - found)
    # IoU of ground-truth class i if predicted class j were renamed to it
    renamed = block / np.maximum(gt[novel][:, None] + pred[novel][None, :] - block, 1.0)
    rows, columns = linear_sum_assignment(renamed, maximize=True)
    best = np.zeros(len(novel))
    best[rows] = renamed[rows, columns]
    names = [class_names[c] for c in novel]
    is_base = np.ones(table.num_classes, dtype=bool)
    is_base[novel] = False
    rows_out = []
    for i in np.flatnonzero(present):
        total = gt[novel[i]]
        rows_out.append(NovelConfusion(
            name=names[i], gt_pixels=int(total),
            as_novel={names[j]: _percent(block[i, j] / total) for j in range(len(novel))},
            as_base=_percent(confusion[novel[i], is_base].sum() / total),
            as_nothing=_percent(table.missed[novel[i]] / total),
        ))
    return NovelDiagnostics(
        union_iou=_percent(union_iou),
        renamed_miou=_percent(best[present].mean()),
        renaming={names[j]: names[i] for i, j in zip(rows, columns) if i != j},
        confusion=rows_out,
    )


def _warnings(
    table: ConfusionMatrix, in_union: np.ndarray, in_gt: np.ndarray, base_mask: np.ndarray, total_gt: int, ignored: int,
    novel_unscored: str | None = None,
) -> list[str]:
    warnings = [novel_unscored] if novel_unscored is not None else []
    evaluated = int(in_union.sum())
    if evaluated < 2:
        warnings.append(
            f"only {evaluated} class evaluated: an mIoU over fewer than two classes says little "
            "(was background mapped to the ignore value?)"
        )
    share = ignored / (ignored + total_gt)
    if share > IGNORED_SHARE_WARNING:
        warnings.append(
            f"{share:.1%} of ground-truth pixels are ignore: the figures cover less than half of the "
            "images (check the ignore value and label offsets)"
        )
    for role, members in (("base", base_mask), ("novel", ~base_mask)):
        if not (in_gt & members).any() and not (role == "novel" and novel_unscored is not None):
            warnings.append(
                f"no {role} class has ground-truth pixels in the evaluated images: "
                f"{role}_miou and hiou are undefined (null)"
            )
    missed = int(table.missed.sum())
    if missed:
        warnings.append(
            f"{missed} labelled pixels have a prediction that is not a class id; they count as misses"
        )
    return warnings


def _format(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def summary_line(report: EvalReport) -> str:
    """One line of the headline figures, both mIoU conventions side by side."""
    return (
        f"mIoU {_format(report.miou)} (present-only {_format(report.miou_present_only)})  "
        f"base {_format(report.base_miou)}  novel {_format(report.novel_miou)}  hIoU {_format(report.hiou)}"
    )


def format_report_rows(report: EvalReport, descending: bool = True) -> list[tuple[str, ...]]:
    """Per-class rows as strings, in :data:`REPORT_COLUMNS` order, sorted by IoU (None last)."""
    sign = -1.0 if descending else 1.0
    ordered = sorted(
        report.per_class,
        key=lambda row: (row.iou is None, sign * row.iou if row.iou is not None else 0.0, row.id),
    )
    return [
        (str(row.id), row.name, row.split_role, _format(row.iou), _format(row.acc), str(row.gt_pixels), str(row.pred_pixels))
        for row in ordered
    ]
