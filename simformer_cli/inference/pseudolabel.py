"""Pseudo labels: the labelling rule, and how good the labels it made are.

For each training image: a pixel takes novel class n where the scores say so and n is in the
image's image-level label (optionally only where its score reaches ``min_score``); base ground
truth is pasted over; every other pixel is ignore. When the split kept its audit labels, the
quality measure reports the novel pseudo labels' mIoU against the full train labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import zarr

from simformer_cli.artifacts.pseudolabels import PseudoLabelSummary
from simformer_cli.artifacts.split import AUDIT_LABELS, SplitArtifact, read_audit_label
from simformer_cli.evaluation import ConfusionMatrix, compute_report
from simformer_cli.inference.groups import GroupNaming
from simformer_cli.progress import Reporter
from simformer_cli.settings.choices import Unnamed


class PseudoLabelRule:
    """The labelling rule for one split: novel classes of the image-level label where the scores say
    so, base ground truth on top, ignore elsewhere.

    ``among="all"`` (the paper): a pixel takes novel class n where the argmax over all K classes is
    n and n is in the image-level label. ``among="image"``: every pixel without base ground truth
    takes the best-scoring of the image's novel classes (none in the image: ignore), the rule the
    CAM baseline uses too. ``among="quantile"``: the same, each class's scores first ranked among
    its own scores on the training images that have it (``quantiles``). ``among="groups"``: the
    same, the image's novel class with the most evidence for the pixel's k-means group
    (``groups``, from ``inference.groups``; the scores break ties). With ``unnamed="ignore"`` a
    pixel whose group has no positive evidence for any of its image's novel classes is left ignore.
    """

    def __init__(self, split: SplitArtifact, min_score: float | None, among: str = "all",
                 quantiles: dict[int, np.ndarray] | None = None, groups: GroupNaming | None = None,
                 unnamed: Unnamed = "name") -> None:
        if among == "quantile" and quantiles is None:
            raise ValueError("among='quantile' needs the classes' quantiles (class_quantiles)")
        if among == "groups" and groups is None:
            raise ValueError("among='groups' needs the named groups (inference.groups.name_groups)")
        self.quantiles = quantiles or {}
        self.groups = groups
        manifest = split.manifest
        self.split = split
        self.ignore = manifest.ignore_index
        self.is_novel = np.zeros(len(manifest.class_names), dtype=bool)
        self.is_novel[manifest.novel_classes] = True
        self.min_score = min_score
        self.among = among
        self.unnamed = unnamed

    def __call__(self, index: int, scores: torch.Tensor) -> np.ndarray:
        allowed = self.is_novel & self.split.image_labels("train")[index]
        weak = self.split.label("train", index)  # base pixels carry their class, all else is ignore
        if self.among != "all":
            classes = np.flatnonzero(allowed)
            if len(classes):
                chosen = scores[torch.from_numpy(classes).to(scores.device)]
                evidence = self._group_evidence(index, classes, chosen) if self.among == "groups" else None
                position = self._ranked(classes, chosen, evidence).argmax(0)
                best = chosen.gather(0, position[None])[0]
                predicted = classes[position.cpu().numpy()]
                keep = np.ones(predicted.shape, dtype=bool)
                if evidence is not None and self.unnamed == "ignore":
                    keep = (evidence.max(0).values > 0).cpu().numpy()
            else:
                best, predicted = None, np.zeros(weak.shape, dtype=np.int64)
                keep = np.zeros(weak.shape, dtype=bool)
        else:
            best, predicted = scores.max(0)
            predicted = predicted.cpu().numpy()
            keep = allowed[predicted]
        if self.min_score is not None and best is not None:
            keep &= best.cpu().numpy() >= self.min_score
        label = np.where(keep, predicted, self.ignore).astype(weak.dtype)
        base = weak != self.ignore
        label[base] = weak[base]
        return label

    def _group_evidence(self, index: int, classes: np.ndarray, chosen: torch.Tensor) -> torch.Tensor:
        """(len(classes), H, W): the evidence of each pixel's group for each of the image's novel classes."""
        size = tuple(chosen.shape[1:])
        return self.groups.pixel_evidence(index, classes, size).to(chosen.device)  # type: ignore[union-attr, arg-type]

    def _ranked(self, classes: np.ndarray, chosen: torch.Tensor, evidence: torch.Tensor | None) -> torch.Tensor:
        """(len(classes), H, W): what the image's novel classes are ranked by at each pixel
        (``evidence``: their groups' evidence at each pixel, for ``among="groups"``)."""
        if self.among == "quantile":
            return torch.stack([quantile_of(self.quantiles[c], row) for c, row in zip(classes, chosen)])
        if evidence is not None:
            return evidence + TIE_BREAK * chosen
        return chosen


#: The weight of a class's score beside its group's evidence (``among="groups"``): scores are at
#: most 1, so they only decide between classes whose evidence is the same (or within 0.001).
TIE_BREAK = 1e-3

#: Scores kept per class for its quantiles: every image's share is thinned to at most
#: ``QUANTILE_PER_IMAGE`` evenly spaced pixels, the pooled scores to ``QUANTILE_POINTS``.
QUANTILE_PER_IMAGE = 2048
QUANTILE_POINTS = 4096


def quantile_of(table: np.ndarray, scores: torch.Tensor) -> torch.Tensor:
    """The quantile (0..1) of each score among the sorted ``table`` (linear between its points)."""
    levels = np.linspace(0.0, 1.0, len(table))
    ranked = np.interp(scores.detach().cpu().numpy().ravel(), table, levels).reshape(scores.shape)
    return torch.from_numpy(ranked).to(scores.device)


def class_quantiles(
    split: SplitArtifact, score_many: Callable[[Sequence[int], Sequence[np.ndarray]], list[torch.Tensor]],
    reporter: Reporter, batch: int = 8,
) -> dict[int, np.ndarray]:
    """Per novel class, the sorted scores (thinned to ``QUANTILE_POINTS``) it gets on the pixels
    without base ground truth of every training image whose image-level label has it: the table
    ``among="quantile"`` ranks that class's scores in. Deterministic: evenly spaced pixels, no draws."""
    manifest = split.manifest
    novel = np.asarray(manifest.novel_classes)
    present = split.image_labels("train")
    images = [i for i in range(split.count("train")) if present[i, novel].any()]
    pooled: dict[int, list[np.ndarray]] = {int(c): [] for c in novel}
    with reporter.task("ranking each novel class's scores", len(images)) as advance:
        for start in range(0, len(images), batch):
            indices = images[start : start + batch]
            for index, scores in zip(indices, score_many(indices, [split.image("train", i) for i in indices])):
                open_pixels = torch.from_numpy(split.label("train", index) == manifest.ignore_index)
                for c in novel[present[index, novel]]:
                    values = scores[int(c)].cpu()[open_pixels].numpy()
                    step = max(1, -(-len(values) // QUANTILE_PER_IMAGE))
                    pooled[int(c)].append(values[::step])
            advance(len(indices))
    tables = {}
    for c, parts in pooled.items():
        values = np.sort(np.concatenate(parts)) if parts else np.zeros(1, dtype=np.float32)
        positions = np.linspace(0, len(values) - 1, min(len(values), QUANTILE_POINTS)).round().astype(int)
        tables[c] = values[positions].astype(np.float64)
    return tables


def measure_quality(staging: Path, split: SplitArtifact, seconds: float, reporter: Reporter) -> PseudoLabelSummary:
    """Pixel shares of the finished labels (not yet committed, in ``staging``) and, where the split
    kept its audit labels, their novel-class IoU against them."""
    group = zarr.open_group(store=str(staging), mode="r")
    labels, sizes = group["labels"], np.asarray(group["sizes"][...])
    manifest = split.manifest
    num_classes, ignore = len(manifest.class_names), manifest.ignore_index
    audit = AUDIT_LABELS in manifest.arrays
    confusion = ConfusionMatrix(num_classes, ignore)
    novel_pixels = ignore_pixels = total = 0
    novel = np.asarray(manifest.novel_classes)
    with reporter.task("measuring pseudo-label quality", len(sizes)) as advance:
        for index, (h, w) in enumerate(sizes):
            label = np.asarray(labels[index, :h, :w])
            total += label.size
            ignore_pixels += int((label == ignore).sum())
            novel_pixels += int(np.isin(label, novel).sum())
            if audit:
                truth = read_audit_label(split, index)
                # Judge only novel decisions: pixels whose truth is novel or that were labelled novel.
                judged = np.isin(truth, novel) | np.isin(label, novel)
                confusion.update(np.where(judged, label, ignore), np.where(judged, truth, ignore))
            advance(1)
    summary = dict(images=len(sizes), seconds=round(seconds, 2),
                   novel_pixel_share=round(novel_pixels / max(total, 1), 6),
                   ignore_pixel_share=round(ignore_pixels / max(total, 1), 6))
    if audit and confusion.counts.sum() > 0:
        report = compute_report(confusion, manifest.class_names, manifest.base_classes, manifest.novel_classes,
                                num_images=len(sizes), ignored_pixels=confusion.ignored_pixels)
        summary["novel_miou_vs_audit"] = report.novel_miou
        summary["novel_iou_per_class"] = {r.name: r.iou for r in report.per_class if r.split_role == "novel"}
    return PseudoLabelSummary(**summary)
