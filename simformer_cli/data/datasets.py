"""Finding a dataset on disk by name: ``--root``, else ``$SIMFORMER_DATASETS``, else ``./datasets``."""

from __future__ import annotations

import os
from pathlib import Path

from simformer_cli.data.ade20k import load_ade20k
from simformer_cli.data.coco_stuff import load_coco_stuff_10k
from simformer_cli.data.folder import load_folder
from simformer_cli.data.source import RawDataset

ENV_ROOT = "SIMFORMER_DATASETS"

LOADERS = {
    "ade20k": load_ade20k,
    "coco-stuff-10k": load_coco_stuff_10k,
    "folder": load_folder,
}


def datasets_root(root: Path | None) -> Path:
    """The folder to look in, laid out like detectron2's ``datasets/``."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(ENV_ROOT):
        return Path(os.environ[ENV_ROOT]).expanduser()
    return Path("datasets")


def load_dataset(name: str, root: Path | None) -> RawDataset:
    return LOADERS[name](datasets_root(root))
