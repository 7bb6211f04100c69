"""What an artifact stores, checked when it is opened, and the store its arrays are read through.

:func:`~simformer_cli.artifacts.store.commit` stamps the root group's attributes with the artifact's
*plan* (a digest of its kind, the digests of its inputs and its params), then lists every stored
file with its size in the manifest (``files``). Opening an artifact costs one ``lstat`` per file,
no hashing of data, and refuses:

- a manifest.json whose plan is not the one stamped beside the arrays (copied from another artifact);
- a listed file that is missing, is not a regular file, or has another size (truncated, grown,
  replaced by another artifact's file).

Its arrays are then read through a :class:`PinnedStore`, which reads listed files only (a chunk that
zarr left out because it was all fill value reads as fill; a listed one that has gone is an error,
never fill), checks each file's size as it reads it, and checks after every read that manifest.json
is still the file read at open, so that the data of an artifact rebuilt meanwhile is never mixed
with the old. Every chunk also carries a crc32c (the arrays' codecs): a chunk whose bytes changed
fails to decode, and :func:`read_stored` names the array and the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import LocalStore

from simformer_cli.artifacts.digest import canonical_json, sha256_of
from simformer_cli.errors import ArtifactError

MANIFEST_FILE = "manifest.json"
PLAN_ATTRIBUTE = "simformer_plan"
REBUILD_COMMANDS = {"split": "simformer split", "predictions": "simformer infer",
                    "pseudolabels": "simformer pseudolabel", "metrics": "simformer eval"}


class InputChanged(ArtifactError):
    """An input artifact was rebuilt (or removed) while a stage read it."""


def rebuilt_message(path: Path | str) -> str:
    return f"{path}: was rebuilt while this stage read it; rerun this stage"


def repair_hint(kind: str, stage: str | None = None) -> str:
    """How to mend a damaged artifact of this kind (a model: made by ``stage``, train or retrain)."""
    if kind == "model":
        command = f"simformer {stage if stage in ('train', 'retrain') else 'train'}"
    else:
        command = REBUILD_COMMANDS.get(kind, "the stage that makes it")
    return f"rebuild it with {command} (same options, plus --force) or copy the whole artifact again"


def plan_stamp(body: Mapping[str, Any]) -> str:
    """Digest of what an artifact was made from: its kind, its inputs' digests (not where they
    were: artifacts may move) and its params. Stamped beside the arrays at commit; a manifest whose
    stamp differs belongs to other data."""
    inputs = body.get("inputs") or {}
    artifacts = {name: {key: value for key, value in ref.items() if key != "path"}
                 for name, ref in (inputs.get("artifacts") or {}).items()}
    return sha256_of(canonical_json({"kind": body.get("kind"), "params": body.get("params"),
                                     "inputs": {"artifacts": artifacts, "dataset": inputs.get("dataset")}}))


def take_inventory(root: Path) -> dict[str, int]:
    """Every file under ``root`` but the manifest, as {'/'-separated relative path: size}, sorted."""
    files: dict[str, int] = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            key = path.relative_to(root).as_posix()
            if key != MANIFEST_FILE:
                files[key] = path.lstat().st_size
    return dict(sorted(files.items()))


def file_signature(info: os.stat_result) -> tuple[int, int, int, int]:
    """Which file this is: a rebuilt artifact's manifest.json is a new file (new inode, new mtime)."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


@dataclass(frozen=True)
class Listing:
    """What one opened artifact stores, and which manifest.json said so."""

    path: Path  # as the user named it, for messages
    files: Mapping[str, int]
    arrays: tuple[str, ...]
    repair: str  # how to mend it (:func:`repair_hint`)
    signature: tuple[int, int, int, int]
    root: str = field(init=False, repr=False, compare=False)  # plain strings: these checks run per read

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", os.fspath(self.path))

    def check_pinned(self) -> None:
        """Refuse when manifest.json is no longer the file read at open (the artifact was rebuilt)."""
        try:
            now = file_signature(os.stat(f"{self.root}/{MANIFEST_FILE}"))
        except OSError:
            now = None
        if now != self.signature:
            raise InputChanged(rebuilt_message(self.path))

    def damaged(self, key: str, problem: str) -> ArtifactError:
        array = max((name for name in self.arrays if key.startswith(name + "/")), key=len, default=None)
        where = f"array {array!r}, file {key[len(array) + 1:]}" if array else f"file {key}"
        return ArtifactError(f"{self.path}: artifact damaged ({where} {problem}); {self.repair}")

    def check_files(self) -> None:
        """One ``lstat`` per listed file: there, a regular file, of the listed size."""
        for key, size in self.files.items():
            try:
                info = os.lstat(f"{self.root}/{key}")
            except OSError:
                problem = "is missing"
            else:
                if not stat.S_ISREG(info.st_mode):
                    problem = "does not match the manifest (not a regular file)"
                elif info.st_size != size:
                    problem = "does not match the manifest (its size differs)"
                else:
                    continue
            self.check_pinned()  # a rebuild under way looks like damage: say what it is
            raise self.damaged(key, problem)


def _read_range(handle: Any, size: int, byte_range: ByteRequest | None) -> bytes:
    if byte_range is None:
        return handle.read()
    if isinstance(byte_range, RangeByteRequest):
        handle.seek(byte_range.start)
        return handle.read(byte_range.end - byte_range.start)
    if isinstance(byte_range, OffsetByteRequest):
        handle.seek(byte_range.offset)
    elif isinstance(byte_range, SuffixByteRequest):
        handle.seek(max(0, size - byte_range.suffix))
    else:
        raise TypeError(f"unexpected byte range {byte_range!r}")
    return handle.read()


class PinnedStore(LocalStore):
    """Read-only zarr store over an opened artifact: listed files only, each of its listed size,
    and only while manifest.json is the one read at open."""

    def __init__(self, listing: Listing) -> None:
        super().__init__(listing.path, read_only=True)
        self.listing = listing

    def with_read_only(self, read_only: bool = False) -> PinnedStore:
        if not read_only:
            raise ValueError("a PinnedStore is read-only")
        return self

    def _read(self, key: str, size: int, byte_range: ByteRequest | None) -> bytes | None:
        metadata = key == "zarr.json" or key.endswith("/zarr.json")  # zarr names what is wrong with these itself
        try:
            with open(f"{self.listing.root}/{key}", "rb") as handle:
                found: int | None = os.fstat(handle.fileno()).st_size
                data = _read_range(handle, found, byte_range) if found == size or metadata else b""
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            found = None
        self.listing.check_pinned()  # after the read: what was read came from the pinned artifact
        if metadata:
            return data if found is not None else None
        if found is None:
            raise self.listing.damaged(key, "is missing")
        if found != size:
            raise self.listing.damaged(key, "does not match the manifest (its size differs)")
        return data

    async def get(self, key: str, prototype: BufferPrototype | None = None,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        size = self.listing.files.get(key)
        if size is None:
            return None  # never stored: a chunk of fill values only, or a node this artifact lacks
        data = await asyncio.to_thread(self._read, key, size, byte_range)
        if data is None:
            return None
        return (prototype or default_buffer_prototype()).buffer.from_bytes(data)

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(key, prototype, byte_range) for key, byte_range in key_ranges)))

    async def exists(self, key: str) -> bool:
        return key in self.listing.files


def _chunk_region(array: zarr.Array, key: str) -> tuple[slice, ...] | None:
    """The part of ``array`` that the chunk (or shard) file ``key`` holds, from its grid indices."""
    step = array.shards or array.chunks
    parts = key.split("/")
    if len(parts) != len(array.shape) or not all(part.isdigit() for part in parts):
        return None
    return tuple(slice(int(i) * s, min((int(i) + 1) * s, extent)) for i, s, extent in zip(parts, step, array.shape))


def locate_damage(arrays: Iterable[zarr.Array]) -> ArtifactError | None:
    """After a failed read: the error naming the first file of these arrays that does not decode
    (each chunk file read on its own), or None when every one does (the failure was not damage)."""
    for array in arrays:
        store = array.store
        if not isinstance(store, PinnedStore):
            continue
        store.listing.check_pinned()
        prefix = f"{array.path}/c/"
        for key in [name for name in store.listing.files if name.startswith(prefix)]:
            region = _chunk_region(array, key[len(prefix):])
            if region is None:
                continue
            try:
                array[region]
            except ArtifactError as exc:
                return exc
            except Exception as exc:  # noqa: BLE001 - whatever the codecs raise, this file does not decode
                text = str(exc)
                problem = ("fails its checksum" if "checksum" in text
                           else f"does not decode ({text.splitlines()[0] if text else type(exc).__name__})")
                return store.listing.damaged(key, problem)
    return None


@contextlib.contextmanager
def named_damage(*arrays: zarr.Array) -> Iterator[None]:
    """Reads inside that fail because stored bytes are damaged end in one line naming the
    artifact, the array and the file; any other failure passes through unchanged."""
    try:
        yield
    except ArtifactError:
        raise
    except Exception:
        found = locate_damage(arrays)
        if found is None:
            raise
        raise found from None


def read_stored(array: zarr.Array, selection: Any = Ellipsis) -> np.ndarray:
    """``array[selection]`` as a numpy array, damage named (see :func:`named_damage`)."""
    with named_damage(array):
        return np.asarray(array[selection])
