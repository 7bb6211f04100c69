"""Images to predict on: one subset of a split, or every image directly inside a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simformer_cli.artifacts.digest import files_fingerprint
from simformer_cli.artifacts.image_files import decode_image
from simformer_cli.artifacts.manifest import DatasetFingerprint
from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.data.folder import IMAGE_SUFFIXES
from simformer_cli.data.ingest import file_sha256, image_size
from simformer_cli.data.source import read_bytes
from simformer_cli.errors import UserError


class SplitImages:
    """The images of one subset of a split."""

    def __init__(self, split: SplitArtifact, subset: str) -> None:
        self.split, self.subset = split, subset
        self.names = split.names(subset)
        self.sizes = split.sizes(subset)

    def image(self, index: int) -> np.ndarray:
        return self.split.image(self.subset, index)


class FolderImages:
    """Every .jpg/.jpeg/.png directly inside a folder, in name order."""

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise UserError(f"--images {folder}: no such folder")
        self.files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise UserError(f"--images {folder}: no .jpg, .jpeg or .png images in this folder")
        self.names = [p.stem for p in self.files]
        if len(set(self.names)) != len(self.names):
            raise UserError(f"--images {folder}: two images share a name (e.g. a.jpg and a.png); keep one")
        self.sizes = np.asarray([image_size(p) for p in self.files], dtype=np.int32)
        self.fingerprint = DatasetFingerprint(
            name="images", layout="folder", files=len(self.files),
            digest=files_fingerprint((p.name, file_sha256(p)) for p in self.files))

    def image(self, index: int) -> np.ndarray:
        path = self.files[index]
        return decode_image(path, read_bytes(path))
