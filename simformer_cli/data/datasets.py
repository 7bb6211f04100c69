"""The datasets simformer reads, by name, and where to find them on disk.

Adding a dataset is one module (a reader: a dataset root -> a :class:`RawDataset`) and one line in
:data:`DATASETS`; the command line offers every name here. Published class splits live in
``official_splits``; the paper's training recipe of a dataset is chosen in ``settings.training``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from simformer_cli.data.ade20k import load_ade20k
from simformer_cli.data.coco_stuff import load_coco_stuff_10k
from simformer_cli.data.folder import load_folder
from simformer_cli.data.source import RawDataset

ENV_ROOT = "SIMFORMER_DATASETS"


@dataclass(frozen=True)
class Dataset:
    """How one dataset is read: ``load(root)`` lists its files and classes (nothing is decoded)."""

    load: Callable[..., RawDataset]
    generated: bool = False  # made by simformer (data.synthetic) into a folder dataset, not found under --root
    # Reads base masks with novel classes as tags (--tags): ``load(root, masks_optional=True)``
    # then lists images of val and test without masks too.
    takes_tags: bool = False


DATASETS: dict[str, Dataset] = {
    "synthetic": Dataset(load_folder, generated=True),
    "ade20k": Dataset(load_ade20k),
    "coco-stuff-10k": Dataset(load_coco_stuff_10k),
    "folder": Dataset(load_folder, takes_tags=True),
}


def datasets_root(root: Path | None) -> Path:
    """The folder to look in, laid out like detectron2's ``datasets/``: ``--root``, else
    ``$SIMFORMER_DATASETS``, else ``./datasets``."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(ENV_ROOT):
        return Path(os.environ[ENV_ROOT]).expanduser()
    return Path("datasets")


def load_dataset(name: str, root: Path | None, *, masks_optional: bool = False) -> RawDataset:
    if masks_optional:
        return DATASETS[name].load(datasets_root(root), masks_optional=True)
    return DATASETS[name].load(datasets_root(root))
