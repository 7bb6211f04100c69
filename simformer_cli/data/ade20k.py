"""ADE20K-150 (SceneParsing ``ADEChallengeData2016``) reader.

``root`` is a datasets folder holding ``ADEChallengeData2016/`` (detectron2 style, as with
``DETECTRON2_DATASETS``), or that folder itself. Three layouts are recognised, first match wins:

``simformer-detectron2``  (SimFormer's repackaged layout, converted labels)
    ``images_detectron2/{train,test}/*.jpg`` + ``annotations_detectron2/{train,test}/*.png``
``maskformer-detectron2``  (MaskFormer's ``datasets/prepare_ade20k_sem_seg.py`` output)
    ``images/{training,validation}/*.jpg`` + ``annotations_detectron2/{training,validation}/*.png``
``release``  (the ADEChallengeData2016.zip as downloaded)
    ``images/{training,validation}/*.jpg`` + ``annotations/{training,validation}/*.png``

Converted labels hold 0..149 and 255 = ignore; release labels hold 0 = "other" (-> ignore) and
1..150 (-> 0..149). A converted layout is preferred when several are present: it is what SimFormer
and MaskFormer train on and what the user produced on purpose; for ADE20K both encode the same
information. ``train``/``training`` -> subset ``train``; ``test``/``validation`` -> subset ``val``
(the official 2000-image validation set). Images and labels pair by file stem.
"""

from __future__ import annotations

from pathlib import Path

from simformer_cli.settings.labels import ignore_index_for
from simformer_cli.data.class_names import ADE20K_CLASSES, ade20k_raw_lut
from simformer_cli.data.source import PngSample, RawDataset, identity_lut
from simformer_cli.errors import DataError, UserError

DATASET_DIR = "ADEChallengeData2016"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

#: layout name -> (images folder, labels folder, {subset: folder name}, labels are converted)
LAYOUTS: dict[str, tuple[str, str, dict[str, str], bool]] = {
    "simformer-detectron2": ("images_detectron2", "annotations_detectron2", {"train": "train", "val": "test"}, True),
    "maskformer-detectron2": ("images", "annotations_detectron2", {"train": "training", "val": "validation"}, True),
    "release": ("images", "annotations", {"train": "training", "val": "validation"}, False),
}

_HOW_TO_FIX = "pass --root (or set SIMFORMER_DATASETS) to the folder that holds ADEChallengeData2016/"


def _required_dirs(layout: str) -> list[str]:
    images, labels, subsets, _ = LAYOUTS[layout]
    return [f"{top}/{sub}" for top in (images, labels) for sub in subsets.values()]


def files_by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Files of ``folder`` with one of ``suffixes`` by stem; hidden files (``.*``) are skipped."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            raise DataError(path, f"two files share the name {path.stem!r} with {found[path.stem].name}", "keep one")
        found[path.stem] = path
    return found


def pair_images_with_labels(root: Path, images_dir: Path, labels_dir: Path, subset: str) -> tuple[PngSample, ...]:
    """``PngSample``s pairing ``images_dir/*.{jpg,jpeg,png}`` with ``labels_dir/*.png`` by stem.

    Paths are stored relative to ``root``. An image without a label, or a label without an image,
    is a :class:`DataError` naming that file; an empty subset is a :class:`UserError`.
    """
    images = files_by_stem(images_dir, IMAGE_SUFFIXES)
    labels = files_by_stem(labels_dir, (".png",))
    if not images:
        raise UserError(
            f"{images_dir}: no images (.jpg, .jpeg, .png) for the {subset} subset; is the download complete?"
        )
    for stem, path in images.items():
        if stem not in labels:
            expected = labels_dir / f"{stem}.png"
            raise DataError(path, f"has no label {expected}", "restore the label or remove the image")
    for stem, path in labels.items():
        if stem not in images:
            raise DataError(path, f"label has no image in {images_dir}", "restore the image or remove the label")
    return tuple(
        PngSample(
            name=stem,
            image=images[stem].relative_to(root).as_posix(),
            label=labels[stem].relative_to(root).as_posix(),
        )
        for stem in sorted(images)
    )


def find_layout(candidates: list[Path], layouts: dict[str, list[str]]) -> tuple[Path, str] | None:
    """First (folder, layout) among ``candidates`` x ``layouts`` whose required folders all exist."""
    for folder in candidates:
        for layout, required in layouts.items():
            if all((folder / rel).is_dir() for rel in required):
                return folder, layout
    return None


def closest_partial_layout(candidates: list[Path], layouts: dict[str, list[str]]) -> tuple[Path, str, list[str]] | None:
    """The candidate/layout with the most (but not all, and at least one) required folders present.

    Ties go to the earlier candidate, then to the later layout (the plain release comes last).
    """
    best: tuple[tuple[int, int, int], Path, str, list[str]] | None = None
    for ci, folder in enumerate(candidates):
        for li, (layout, required) in enumerate(layouts.items()):
            missing = [rel for rel in required if not (folder / rel).is_dir()]
            key = (len(required) - len(missing), -ci, li)
            if key[0] and missing and (best is None or key > best[0]):
                best = (key, folder, layout, missing)
    return None if best is None else best[1:]


def load_ade20k(root: Path) -> RawDataset:
    """List ADE20K-150 from ``root`` (a datasets folder, or ``ADEChallengeData2016`` itself)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: datasets folder not found; {_HOW_TO_FIX}")
    candidates = [root / DATASET_DIR, root]
    required = {layout: _required_dirs(layout) for layout in LAYOUTS}
    found = find_layout(candidates, required)
    if found is None:
        partial = closest_partial_layout(candidates, required)
        if partial is not None:
            folder, layout, missing = partial
            raise UserError(
                f"{folder}: looks like the ADE20K {layout} layout but lacks {', '.join(m + '/' for m in missing)}; "
                "complete the download or conversion"
            )
        raise UserError(
            f"{root}: no ADE20K found; expected {DATASET_DIR}/ with images/{{training,validation}}/ and "
            "annotations/{training,validation}/ (release) or annotations_detectron2/{training,validation}/ "
            "(MaskFormer) or images_detectron2/{train,test}/ + annotations_detectron2/{train,test}/ (SimFormer); "
            + _HOW_TO_FIX
        )
    folder, layout = found
    images_top, labels_top, subset_dirs, converted = LAYOUTS[layout]
    num_classes = len(ADE20K_CLASSES)
    ignore = ignore_index_for(num_classes)
    lut = identity_lut(num_classes, ignore) if converted else ade20k_raw_lut(ignore)
    subsets = {
        subset: pair_images_with_labels(folder, folder / images_top / sub, folder / labels_top / sub, subset)
        for subset, sub in subset_dirs.items()
    }
    return RawDataset(
        name="ade20k",
        root=folder,
        layout=layout,
        class_names=ADE20K_CLASSES,
        lut=lut,
        subsets=subsets,
    )
