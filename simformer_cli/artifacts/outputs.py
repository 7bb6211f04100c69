"""Where ``export`` and ``viz`` write: plain files for people and other tools, written so that
nothing simformer did not write is ever overwritten and a failure leaves nothing half-written.

- A folder of PNGs (``export --format png``, ``viz``) is built whole in a hidden staging folder
  beside ``--out`` and renamed into place, so a failure (disk full, Ctrl-C, a kill) leaves no
  truncated PNG and no partial set of them. The folder holds a small marker, ``.simformer.json``,
  naming what wrote it and the sha256 of every file. An existing ``--out`` folder is replaced (as a
  whole) only when it is empty or holds exactly such an output of the same kind, every file as
  simformer wrote it; a folder with any other file, or a file changed since, is refused untouched.
- A single file (``export --format coco``) is written under a temporary name and renamed into
  place. An existing file is replaced only when it is a previous COCO export of simformer: those
  begin with a fixed ``"info"`` header, and only the first bytes are read to recognise one, so a
  large foreign JSON is neither parsed nor touched.
- Nothing is ever written inside an artifact folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from simformer_cli.artifacts.digest import file_digest
from simformer_cli.artifacts.store import disk_full_message, fsync_dir, is_artifact, is_disk_full
from simformer_cli.errors import UserError

MARKER = ".simformer.json"
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def enclosing_artifact(path: Path) -> Path | None:
    """The artifact folder that is ``path`` or holds it, if any."""
    for candidate in (path, *path.parents):
        if candidate.is_dir() and is_artifact(candidate):
            return candidate
    return None


def refuse_artifact(out: Path) -> None:
    artifact = enclosing_artifact(out.absolute())
    if artifact is None:
        return
    inside = artifact != out.absolute()
    where = f"is inside the simformer artifact {artifact}" if inside else "is the simformer artifact"
    raise UserError(f"--out {out}: {where}; export and viz never write into artifacts. Choose an --out outside it")


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and not path.is_symlink() and path != path.parent:
        path = path.parent
    return path


def check_writable(out: Path) -> None:
    """Refuse before any work when the folder that would receive ``out`` cannot be written."""
    parent = out.absolute().parent
    base = _existing_ancestor(parent)
    if not base.is_dir():
        raise UserError(f"{base}: cannot create the output folder (Not a directory); choose another --out")
    if not os.access(base, os.W_OK):
        raise UserError(f"{base}: not writable; choose another --out")


def write_error(exc: OSError, out: Path) -> BaseException:
    """The one line for a write that failed for want of space or of write access; else ``exc`` itself."""
    if is_disk_full(exc):
        return UserError(disk_full_message(out))
    if exc.errno in NOT_WRITABLE:
        return UserError(f"{_existing_ancestor(out.parent)}: not writable; choose another --out")
    return exc


@contextlib.contextmanager
def _created_parents(folder: Path, lock_name: str | None = None) -> Iterator[None]:
    """Make ``folder`` (and its missing parents); remove the ones made here if the block fails."""
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if missing and lock_name:  # a lock file in a folder made here is ours alone
            with contextlib.suppress(OSError):
                (folder / lock_name).unlink()
        for path in missing:  # deepest first; a folder someone else filled meanwhile stays
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    lock_path = out.parent / f".{out.name}.lock"
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"--out {out}: another simformer process is writing there; wait for it to finish "
                            "or choose another --out") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def plain_file_name(name: str, source: Path) -> str:
    """``name`` if it is a plain file name (an image name from an artifact becomes one)."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UserError(f"{source}: image name {name!r} cannot be a file name; the artifact is damaged, "
                        "rerun the stage that makes it")
    return name


class FolderOutput:
    """A folder of files written by one simformer command (``kind``), replaced only as a whole.

    ``describe`` names such a folder in messages ("simformer's PNG export"). Checks happen at
    construction, before any work; :meth:`writing` stages, publishes and cleans up.
    """

    def __init__(self, out: Path, kind: str, describe: str, *, what_out_holds: str) -> None:
        self.out, self.kind, self.describe = Path(out), kind, describe
        if self.out.is_symlink():
            raise UserError(f"--out {self.out}: is a symbolic link; refusing to replace it. Choose another --out")
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"--out {self.out}: exists and is not a folder; {what_out_holds}")
        refuse_artifact(self.out)
        check_writable(self.out)
        self._check_existing()

    def _existing_entries(self) -> list[str]:
        return sorted(os.listdir(self.out)) if self.out.is_dir() else []

    def _check_existing(self) -> list[str]:
        """Refuse unless ``out`` is missing, empty, or exactly an earlier output of this kind."""
        entries = self._existing_entries()
        if not entries:
            return entries
        record = read_marker(self.out / MARKER)
        others = [name for name in entries if name != MARKER]
        if record is None or record.get("kind") != self.kind:
            example = (others or entries)[0]
            raise UserError(f"--out {self.out}: holds files that are not {self.describe} (e.g. {example}); "
                            "refusing to overwrite them. Choose a new folder or remove them yourself")
        files = record["files"]
        for name in others:
            path = self.out / name
            if name not in files or path.is_symlink() or not path.is_file():
                raise UserError(f"--out {self.out}: holds files that are not {self.describe} (e.g. {name}); "
                                "refusing to overwrite them. Choose a new folder or remove them yourself")
            if file_digest(path) != files[name]:
                raise UserError(f"--out {self.out}: {name} was changed after simformer wrote it; refusing to "
                                "overwrite it. Choose a new folder or remove it yourself")
        return entries

    @contextlib.contextmanager
    def writing(self, source_digest: str) -> Iterator[_Staging]:
        """Yield a staging folder to :meth:`_Staging.write` into; on success it becomes ``out``."""
        out = self.out.absolute()
        try:
            with _created_parents(out.parent, f".{out.name}.lock"), _lock(out):
                _remove_leftovers(out)
                entries = self._check_existing()  # again, under the lock
                staging = out.parent / f".{out.name}.staging-{os.getpid()}"
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir()
                try:
                    files = _Staging(staging)
                    yield files
                    files.finish(self.kind, source_digest)
                    if self._existing_entries() != entries:
                        raise UserError(f"--out {self.out}: changed while simformer was writing; rerun")
                    _publish(staging, out)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
        except OSError as exc:
            error = write_error(exc, out)
            if error is exc:
                raise
            raise error from None


class _Staging:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: dict[str, str] = {}

    def write(self, name: str, data: bytes) -> Path:
        if name in self.files:
            raise UserError(f"two images are both called {Path(name).stem!r}; the artifact is damaged, "
                            "rerun the stage that makes it")
        path = self.folder / name
        with open(path, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        self.files[name] = _digest(data)
        return path

    def finish(self, kind: str, source_digest: str) -> None:
        record = {"written_by": "simformer", "kind": kind, "source": source_digest, "files": self.files}
        self.write(MARKER, json.dumps(record, indent=1).encode("utf-8"))
        del self.files[MARKER]
        fsync_dir(self.folder)


def read_marker(path: Path) -> dict | None:
    """The marker of a folder simformer wrote, or None (missing, unreadable, or not simformer's)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not (isinstance(record, dict) and record.get("written_by") == "simformer" and isinstance(record.get("kind"), str)
            and isinstance(record.get("files"), dict) and all(isinstance(v, str) for v in record["files"].values())):
        return None
    return record


def _remove_leftovers(out: Path) -> None:
    """Staging and replaced folders of ``out`` that a killed writer left (the lock is held)."""
    pattern = re.compile(re.escape(f".{out.name}.") + r"(staging|replaced)-\d+")
    for path in out.parent.iterdir():
        if pattern.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _publish(staging: Path, out: Path) -> None:
    """Put the finished folder in place of ``out`` (which is missing, or checked and ours)."""
    if out.exists():
        old = out.parent / f".{out.name}.replaced-{os.getpid()}"
        try:
            os.rename(out, old)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            raise UserError(f"--out {out}: cannot be replaced ({exc.strerror}; a mount point?); "
                            "choose a new folder inside it") from None
        try:
            os.rename(staging, out)
        except BaseException:
            os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, out)
    fsync_dir(out.parent)


# ---------------------------------------------------------------- one file (COCO JSON)

COCO_HEADER = '{"info": {"description": "simformer export --format coco"'


def check_coco_out(out: Path) -> None:
    """Refuse an ``--out`` that COCO export must not write: a folder, a link, any existing file that is
    not an earlier COCO export of simformer, anything inside an artifact, an unwritable place."""
    if out.is_dir() and not out.is_symlink():
        raise UserError(f"--out {out}: is a folder; COCO export writes one JSON file, e.g. --out results.json")
    refuse_artifact(out)
    if out.is_symlink():
        raise UserError(f"--out {out}: is a symbolic link; refusing to replace it. Choose another --out")
    if out.exists() and not is_coco_export(out):
        raise UserError(f"--out {out}: exists and is not a COCO export of simformer; refusing to overwrite it. "
                        "Choose another --out or remove it yourself")
    check_writable(out)


def is_coco_export(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(COCO_HEADER.encode("utf-8")))
    except OSError:
        return False
    return head == COCO_HEADER.encode("utf-8")


def coco_document(source_digest: str, categories: list[dict], annotations: list[dict]) -> bytes:
    document = {"info": {"description": "simformer export --format coco", "predictions": source_digest},
                "categories": categories, "annotations": annotations}
    data = json.dumps(document).encode("utf-8")
    assert data.startswith(COCO_HEADER.encode("utf-8"))
    return data


def write_file(out: Path, data: bytes) -> None:
    """Write ``data`` to ``out`` under a temporary name, then rename it into place."""
    out = out.absolute()
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        with _created_parents(out.parent):
            try:
                with open(tmp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                check_coco_out(out)  # still an earlier export of ours (or nothing) at the last moment
                os.replace(tmp, out)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            fsync_dir(out.parent)
    except OSError as exc:
        error = write_error(exc, out)
        if error is exc:
            raise
        raise error from None
