"""The ``pseudolabel`` stage (method reference section 6.1): model + split (train) -> pseudo labels.

For each training image: predict class scores over all K classes (optionally multi-scale + flip);
a pixel takes novel class n where the argmax is n and n is in the image's image-level label
(optionally only where its score reaches ``min_score``); base ground truth is pasted over; every
other pixel is ignore. When the split kept its audit labels, the manifest reports how good the
novel pseudo labels are (novel mIoU against the full train labels).

A CAM model (``train --method cam``) gives the same artifact through the same rule: its scores are
the image's novel-class CAMs refined by the random walk (``cam.pseudolabel``), and ``min_score``
defaults to the model's ``cam.min_score``.
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from simformer_cli.artifacts.inventory import read_stored
from simformer_cli.artifacts.manifest import ArraySpec, ArtifactRef, Inputs, Provenance
from simformer_cli.artifacts.pseudolabels_manifest import PseudoLabelParams, PseudoLabelsManifest, PseudoLabelSummary
from simformer_cli.artifacts.store import current_artifact, open_artifact
from simformer_cli.cam.pseudolabel import CamScorer
from simformer_cli.data.split_store import SplitArtifact, read_audit_label, read_cut
from simformer_cli.errors import UserError
from simformer_cli.evaluation import ConfusionMatrix, compute_report
from simformer_cli.inference.sharded import PredictionJob, run_prediction_job
from simformer_cli.pipeline.infer import SplitImages, test_time_settings
from simformer_cli.progress import Reporter, SilentReporter
from simformer_cli.training.devices import DeviceChoice, start_runtime, stop_runtime
from simformer_cli.training.model_artifact import load_model


@dataclass(frozen=True)
class PseudoLabelResult:
    manifest: PseudoLabelsManifest
    digest: str
    path: Path
    skipped: bool


class PseudoLabelRule:
    """The labelling rule for one split: novel classes of the image-level label where the scores say
    so, base ground truth on top, ignore elsewhere.

    ``among="all"`` (the paper): a pixel takes novel class n where the argmax over all K classes is
    n and n is in the image-level label. ``among="image"``: every pixel without base ground truth
    takes the best-scoring of the image's novel classes (none in the image: ignore), the rule the
    CAM baseline uses too.
    """

    def __init__(self, split: SplitArtifact, min_score: float | None, among: str = "all") -> None:
        manifest = split.manifest
        self.split = split
        self.ignore = manifest.ignore_index
        self.is_novel = np.zeros(len(manifest.class_names), dtype=bool)
        self.is_novel[manifest.novel_classes] = True
        self.min_score = min_score
        self.among = among

    def __call__(self, index: int, scores: torch.Tensor) -> np.ndarray:
        allowed = self.is_novel & self.split.image_labels("train")[index]
        weak = self.split.label("train", index)  # base pixels carry their class, all else is ignore
        if self.among == "image":
            classes = np.flatnonzero(allowed)
            if len(classes):
                best, position = scores[torch.from_numpy(classes).to(scores.device)].max(0)
                predicted = classes[position.cpu().numpy()]
                keep = np.ones(predicted.shape, dtype=bool)
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


def run_pseudolabel(
    *,
    model: Path,
    split: Path,
    out: Path | None = None,
    scales: tuple[float, ...] = (1.0,),
    flip: bool = False,
    min_score: float | None = None,
    among: str = "all",
    device: DeviceChoice = "auto",
    force: bool = False,
    reporter: Reporter | None = None,
) -> PseudoLabelResult:
    runtime = start_runtime(device)
    reporter = reporter if (reporter is not None and runtime.is_main) else SilentReporter()
    try:
        network, model_manifest, model_digest = load_model(model, runtime.device)
        split_artifact = SplitArtifact(split)
        trained_on = model_manifest.inputs.artifacts.get("split")
        if trained_on is None or trained_on.digest != split_artifact.digest:
            raise UserError(f"--split {split}: the model {model} was trained on another split; use that split")
        if model_manifest.params.settings.method == "oracle":
            raise UserError(f"--model {model}: trained on the full labels (--method oracle), novel pixels included; "
                            "pseudo labels come from a weak-shot model (train without --method oracle)")
        inputs = Inputs(artifacts={
            "model": ArtifactRef(path=str(Path(model).absolute()), kind="model", digest=model_digest),
            "split": ArtifactRef(path=str(Path(split).absolute()), kind="split", digest=split_artifact.digest),
        })
        cam = model_manifest.params.settings.cam  # set for method cam, and only then
        if cam is not None and min_score is None:
            min_score = cam.min_score
        params = PseudoLabelParams(test_time=test_time_settings(model_manifest, scales, flip), min_score=min_score,
                                   among=among)
        out = Path(out) if out is not None else Path(split).parent / "pseudolabels.zarr"
        current = current_artifact(out, PseudoLabelsManifest, inputs, params, force=force)
        if current is not None:
            reporter.info(f"{out}: up to date (same model, split and settings), skipping; pass --force to redo")
            return PseudoLabelResult(*current, out, True)
        manifest = split_artifact.manifest
        job = PredictionJob(network=network, source=SplitImages(split_artifact, "train"), test_time=params.test_time,
                            num_classes=len(manifest.class_names), ignore_index=manifest.ignore_index,
                            label_rule=PseudoLabelRule(split_artifact, min_score, among),
                            scorer=None if cam is None else CamScorer(network, split_artifact, cam,  # type: ignore[arg-type]
                                                                      params.test_time, runtime))

        def make_manifest(staging: Path, arrays: dict[str, ArraySpec], seconds: float) -> PseudoLabelsManifest:
            summary = _quality(staging, split_artifact, seconds, reporter)
            return PseudoLabelsManifest(
                inputs=inputs, params=params, arrays=arrays, summary=summary,
                provenance=Provenance(command=list(sys.argv), host=socket.gethostname()),
                class_names=manifest.class_names, base_classes=manifest.base_classes,
                novel_classes=manifest.novel_classes, ignore_index=manifest.ignore_index,
                label_dtype=job.label_dtype,  # type: ignore[arg-type]
            )

        manifest, digest = run_prediction_job(job, out=out, inputs=inputs, params=params, runtime=runtime, reporter=reporter,
                                              make_manifest=make_manifest, manifest_model=PseudoLabelsManifest)
        return PseudoLabelResult(manifest, digest, out, False)
    finally:
        stop_runtime(runtime)


def _quality(staging: Path, split: SplitArtifact, seconds: float, reporter: Reporter) -> PseudoLabelSummary:
    """Pixel shares of the finished labels and, with audit labels, their novel-class IoU."""
    import zarr

    group = zarr.open_group(store=str(staging), mode="r")
    labels, sizes = group["labels"], np.asarray(group["sizes"][...])
    manifest = split.manifest
    num_classes, ignore = len(manifest.class_names), manifest.ignore_index
    audit = "audit/train_labels" in manifest.arrays
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


class PseudoLabelReader:
    """Pseudo label of a training image by index, for ``retrain`` (picklable; opens lazily)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._group = None
        self._sizes: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_group": None, "_sizes": None}

    def _open(self) -> np.ndarray:
        if self._group is None:
            _, _, self._group = open_artifact(self.path, PseudoLabelsManifest)
            self._sizes = read_stored(self._group["sizes"])
            self._labels = self._group["labels"]
        return self._sizes  # type: ignore[return-value]

    def __call__(self, index: int) -> np.ndarray:
        h, w = self._open()[index]
        return read_stored(self._labels, (index, slice(0, h), slice(0, w)))

    def read_range(self, start: int, stop: int) -> list[np.ndarray]:
        """Labels ``start..stop-1`` in one read (the training cache's fill)."""
        sizes = self._open()[start:stop]
        return read_cut(self._labels, start, sizes)
