"""Which labels a training run reads, decided once from its resolved settings: the split's weak
labels and image-level labels (SimFormer, CAM), its full labels (oracle), or pseudo labels (retrain)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from simformer_cli.artifacts.pseudolabels import PseudoLabelReader
from simformer_cli.artifacts.split import AUDIT_LABELS, AuditLabelReader, SplitArtifact
from simformer_cli.errors import UserError
from simformer_cli.settings.training import TrainSettings
from simformer_cli.training.train_data import LabelReader

#: What a training run may read as labels, as the model manifest records it (``label_sources``).
WEAK_LABELS = "split:train/labels (weak: novel pixels ignored)"
IMAGE_LABELS = "split:train/image_labels"
FULL_LABELS = "split:audit/train_labels (full: novel pixels included)"
CROP_LABELS = "split:audit/train_labels (only which novel classes are inside each crop)"
PSEUDO_LABELS = "pseudolabels:labels (base ground truth + predicted novel pixels)"


@dataclass(frozen=True)
class TrainingLabels:
    """Where one run's labels come from: decided once, from the fully resolved settings."""

    reader: LabelReader | None  # None: the split's weak train labels
    crop_reader: LabelReader | None  # image_labels=crop: the full labels the crops' classes are read from
    sources: tuple[str, ...]


def training_labels(settings: TrainSettings, split: SplitArtifact, pseudolabels: Path | None) -> TrainingLabels:
    """The labels ``settings`` train on. Only ``method`` (and ``image_labels``) of the resolved settings
    decide, so no option can make a run read other labels than its manifest says it did."""
    has_full = AUDIT_LABELS in split.manifest.arrays
    if settings.method == "supervised" or pseudolabels is not None:
        if settings.method != "supervised" or pseudolabels is None:
            raise UserError(f"method {settings.method}: pseudo labels are trained on by `simformer retrain` "
                            "(method supervised) only")
        return TrainingLabels(PseudoLabelReader(Path(pseudolabels)), None, (PSEUDO_LABELS,))
    if settings.method == "oracle":
        if not has_full:
            raise UserError(f"--method oracle: {split.path} has no full train labels; "
                            "make the split with --keep-train-labels")
        return TrainingLabels(AuditLabelReader(split.path), None, (FULL_LABELS,))
    if settings.image_labels == "crop":
        if not has_full:
            raise UserError(f"--set image_labels=crop: {split.path} has no full train labels to read the crops' "
                            "classes from; make the split with --keep-train-labels")
        return TrainingLabels(None, AuditLabelReader(split.path), (WEAK_LABELS, IMAGE_LABELS, CROP_LABELS))
    return TrainingLabels(None, None, (WEAK_LABELS, IMAGE_LABELS))
