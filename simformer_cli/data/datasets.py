"""The datasets simformer reads, by name, and where to find them on disk.

Adding a dataset is one module (a reader: a dataset root -> a :class:`RawDataset`, or the named
files of :class:`DataSources` -> a :class:`RawDataset`) and one line in :data:`DATASETS`; the
command line offers every name here. Published class splits live in
``official_splits``; the paper's training recipe of a dataset is chosen in ``settings.training``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from simformer_cli.data.ade20k import load_ade20k
from simformer_cli.data.coco_json import load_coco_json
from simformer_cli.data.coco_stuff import load_coco_stuff_10k
from simformer_cli.data.folder import load_folder
from simformer_cli.data.source import RawDataset
from simformer_cli.errors import UserError

ENV_ROOT = "SIMFORMER_DATASETS"


@dataclass(frozen=True)
class DataSources:
    """Where a dataset is: a root folder, or (COCO JSON) an images folder and annotation files."""

    root: Path | None = None
    images: Path | None = None
    annotations: Path | None = None
    val_annotations: Path | None = None
    masks_optional: bool = False  # with --tags: val and test may come without masks


@dataclass(frozen=True)
class Dataset:
    """How one dataset is read: ``load(root)`` lists its files and classes (nothing is decoded);
    a dataset of named files reads them with ``load_files(sources)`` instead."""

    load: Callable[..., RawDataset] | None = None
    generated: bool = False  # made by simformer (data.synthetic) into a folder dataset, not found under --root
    # Reads base masks with novel classes as tags (--tags): ``load(root, masks_optional=True)``
    # then lists images of val and test without masks too.
    takes_tags: bool = False
    load_files: Callable[[DataSources], RawDataset] | None = None


DATASETS: dict[str, Dataset] = {
    "synthetic": Dataset(load_folder, generated=True),
    "ade20k": Dataset(load_ade20k),
    "coco-stuff-10k": Dataset(load_coco_stuff_10k),
    "folder": Dataset(load_folder, takes_tags=True),
    "coco-json": Dataset(takes_tags=True, load_files=lambda s: load_coco_json(s.images, s.annotations, s.val_annotations)),
}

FILE_OPTIONS = ("--images", "--annotations", "--val-annotations")


def datasets_root(root: Path | None) -> Path:
    """The folder to look in, laid out like detectron2's ``datasets/``: ``--root``, else
    ``$SIMFORMER_DATASETS``, else ``./datasets``."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(ENV_ROOT):
        return Path(os.environ[ENV_ROOT]).expanduser()
    return Path("datasets")


def load_dataset(name: str, sources: DataSources) -> RawDataset:
    entry = DATASETS[name]
    given = [option for option, value in zip(FILE_OPTIONS, (sources.images, sources.annotations,
                                                            sources.val_annotations)) if value is not None]
    if entry.load_files is not None:
        if sources.root is not None:
            raise UserError(f"--root: --dataset {name} reads {', '.join(FILE_OPTIONS)}, not a root folder")
        return entry.load_files(sources)
    if given:
        readers = [n for n, d in DATASETS.items() if d.load_files is not None]
        raise UserError(f"{given[0]}: --dataset {name} reads --root; {', '.join(FILE_OPTIONS)} go with {' or '.join(readers)}")
    assert entry.load is not None
    if sources.masks_optional:
        return entry.load(datasets_root(sources.root), masks_optional=True)
    return entry.load(datasets_root(sources.root))
