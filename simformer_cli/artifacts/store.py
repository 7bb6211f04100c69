"""Writing artifacts atomically and reading them back with every check a later stage relies on.

An artifact is a directory ``NAME.zarr`` holding a zarr v3 group and ``manifest.json``:
``{"digest": "sha256:...", "manifest": {...}}``. Writers build the whole directory under a hidden
staging name beside the target, write the manifest last, then rename it into place, so a crash at
any moment leaves the previous artifact or none. A directory without a valid manifest is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import zarr
from pydantic import ValidationError

from simformer_cli.artifacts.digest import canonical_json, manifest_digest
from simformer_cli.artifacts.manifest import ManifestBase
from simformer_cli.errors import ArtifactError, UserError

MANIFEST_FILE = "manifest.json"
M = TypeVar("M", bound=ManifestBase)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT, also when a library reports it in its own exception type (safetensors)."""
    if isinstance(exc, OSError):
        return exc.errno in DISK_FULL
    if isinstance(exc, UserError):
        return False
    text = str(exc)
    return "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text


def disk_full_message(out: Path) -> str:
    return f"{out.parent}: disk full while writing {out.name}; free some space and rerun"


def _remove_leftovers(out: Path) -> None:
    """Delete what writers killed outright (SIGKILL, power loss) left beside ``out``.

    Called with the lock held, so no live writer owns a staging or replaced folder of ``out``.
    Resumable ``.NAME.partial`` folders are kept: they are how an interrupted run continues.
    """
    pattern = re.compile(re.escape(f".{out.name}.") + r"(staging|replaced)-\d+")
    for path in out.parent.iterdir():
        if pattern.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def is_artifact(path: Path) -> bool:
    return (path / MANIFEST_FILE).is_file()


@contextlib.contextmanager
def _exclusive_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for the duration; a second writer fails at once."""
    lock_path = out.parent / f".{out.name}.lock"
    try:
        handle = open(lock_path, "a+")
    except OSError as exc:
        raise UserError(f"{out.parent}: cannot write here ({exc.strerror}); choose another --out") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{out}: another simformer process is writing this artifact; wait for it to finish "
                "or choose another --out"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_output_path(out: Path) -> None:
    """Refuse to overwrite something that is not an artifact (an empty folder is fine)."""
    if out.exists() and not (out.is_dir() and (is_artifact(out) or not any(out.iterdir()))):
        raise UserError(
            f"{out}: exists and is not a simformer artifact; refusing to overwrite it. "
            "Choose another --out or remove it yourself"
        )


@contextlib.contextmanager
def staged_artifact(out: Path, *, resume_key: str | None = None) -> Iterator[Path]:
    """Yield a private directory to build the artifact in; :func:`commit` publishes it.

    Without ``resume_key`` the staging directory is fresh and removed on failure. With one, it is
    ``.NAME.partial`` and kept on failure, so a rerun with the same key can continue from the
    pieces already there (a different key starts over).
    """
    out = out.absolute()
    check_output_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out.parent}: cannot create the output folder ({exc.strerror}); choose another --out") from None
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"{out.parent}: not writable; choose another --out")
    with _exclusive_lock(out):
        _remove_leftovers(out)
        if resume_key is None:
            staging = out.parent / f".{out.name}.staging-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging = out.parent / f".{out.name}.partial"
        try:
            if resume_key is not None:
                key_file = staging / ".resume-key"
                if staging.exists() and (not key_file.is_file() or key_file.read_text() != resume_key):
                    shutil.rmtree(staging)
                staging.mkdir(exist_ok=True)
                key_file.write_text(resume_key)
            staging.mkdir(exist_ok=True)
            yield staging
        except BaseException as exc:
            if resume_key is None:
                shutil.rmtree(staging, ignore_errors=True)
            if is_disk_full(exc):
                raise UserError(disk_full_message(out)) from None
            raise
        shutil.rmtree(staging, ignore_errors=True)  # only left if commit() was never called


def commit(staging: Path, out: Path, manifest: ManifestBase) -> str:
    """Write the manifest last, then move the finished artifact into place. Returns its digest."""
    out = out.absolute()
    if not (staging / "zarr.json").is_file():  # every artifact is a zarr group, arrays or not
        zarr.create_group(store=str(staging), zarr_format=3)
    (staging / ".resume-key").unlink(missing_ok=True)
    document = manifest_document(manifest)
    try:
        _write_file_atomically(staging / MANIFEST_FILE, json.dumps(document, indent=2).encode("utf-8"))
        _fsync_dir(staging)
        if out.exists():
            old = out.parent / f".{out.name}.replaced-{os.getpid()}"
            os.rename(out, old)
            os.rename(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, out)
        _fsync_dir(out.parent)
    except OSError as exc:
        if is_disk_full(exc):
            raise UserError(disk_full_message(out)) from None
        raise
    return document["digest"]


def manifest_document(manifest: ManifestBase) -> dict[str, Any]:
    body = manifest.model_dump(mode="json")
    return {"digest": manifest_digest(body), "manifest": body}


def _load_document(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ArtifactError(f"{path}: no such artifact; check the path or run the stage that makes it")
    if not path.is_dir() or not is_artifact(path):
        raise ArtifactError(
            f"{path}: not a simformer artifact (no {MANIFEST_FILE}); it may be from an interrupted run. "
            "Rerun the stage that makes it"
        )
    try:
        document = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: {MANIFEST_FILE} is unreadable ({exc}); rerun the stage that makes it") from None
    if not isinstance(document, dict) or set(document) != {"digest", "manifest"} or not isinstance(
        document["manifest"], dict
    ):
        raise ArtifactError(f"{path}: {MANIFEST_FILE} is not a simformer manifest; rerun the stage that makes it")
    return document


def read_manifest(path: Path, model: type[M]) -> tuple[M, str]:
    """Read and check a manifest: kind, schema version, digest, then full validation."""
    path = Path(path)
    document = _load_document(path)
    body = document["manifest"]
    expected_kind = model.model_fields["kind"].annotation.__args__[0]  # type: ignore[union-attr]
    if body.get("kind") != expected_kind:
        raise ArtifactError(f"{path}: is a {body.get('kind')!r} artifact, but a {expected_kind!r} artifact is needed here")
    expected_version = model.model_fields["schema_version"].default
    if body.get("schema_version") != expected_version:
        raise ArtifactError(
            f"{path}: {expected_kind} schema version {body.get('schema_version')} is not supported "
            f"(this simformer reads version {expected_version}); rebuild it with this version"
        )
    if manifest_digest(body) != document["digest"]:
        raise ArtifactError(
            f"{path}: {MANIFEST_FILE} was modified after it was written (digest mismatch); "
            "rerun the stage that makes it instead of editing manifests"
        )
    try:
        manifest = model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")  # pydantic's prefix for a validator's own error
        raise ArtifactError(f"{path}: manifest field {where!r}: {message}; rerun the stage that makes it") from None
    return manifest, document["digest"]


def open_artifact(path: Path, model: type[M]) -> tuple[M, str, zarr.Group]:
    """Open an artifact read-only after checking its manifest and that every listed array is complete."""
    manifest, digest = read_manifest(path, model)
    try:  # simformer writes zarr v3 only: nothing else (e.g. v2 metadata with other codecs) is read
        group = zarr.open_group(store=str(path), mode="r", zarr_format=3)
    except Exception as exc:  # zarr raises several types for a damaged store
        raise ArtifactError(f"{path}: zarr group cannot be opened ({exc}); rerun the stage that makes it") from None
    for name, spec in manifest.arrays.items():
        try:
            array = group[name]
        except KeyError:
            raise ArtifactError(f"{path}: array {name!r} is missing; the artifact is incomplete, rerun its stage") from None
        except Exception as exc:  # damaged or foreign array metadata
            raise ArtifactError(f"{path}: array {name!r} cannot be opened ({exc}); rerun the stage that makes it") from None
        if not isinstance(array, zarr.Array):
            raise ArtifactError(f"{path}: {name!r} is not an array; rerun the stage that makes it")
        if list(array.shape) != spec.shape or str(array.dtype) != spec.dtype:
            raise ArtifactError(
                f"{path}: array {name!r} is {array.dtype}{list(array.shape)}, manifest says "
                f"{spec.dtype}{spec.shape}; rerun the stage that makes it"
            )
    return manifest, digest, group


def plan_key(inputs: Any, params: Any) -> str:
    """Digest of what a run will use: keys resumable staging folders to one plan."""
    from simformer_cli.artifacts.digest import sha256_of

    return sha256_of(canonical_json({"inputs": inputs.model_dump(mode="json"), "params": params.model_dump(mode="json")}))


def current_artifact(out: Path, model: type[M], inputs: Any, params: Any, *, force: bool) -> tuple[M, str] | None:
    """The artifact at ``out`` if it is valid and records exactly these inputs and params.

    A broken or foreign artifact there counts as absent: the stage rebuilds it.
    """
    if force or not is_artifact(out):
        return None
    try:
        existing, digest = read_manifest(out, model)
    except ArtifactError:
        return None
    return (existing, digest) if same_plan(existing, inputs, params) else None


def same_plan(existing: ManifestBase, planned_inputs: Any, planned_params: Any) -> bool:
    """Up to date = the manifest records the same inputs and params the stage would use now."""
    return canonical_json(existing.inputs.model_dump(mode="json")) == canonical_json(
        planned_inputs.model_dump(mode="json")
    ) and canonical_json(existing.params.model_dump(mode="json")) == canonical_json(  # type: ignore[attr-defined]
        planned_params.model_dump(mode="json")
    )
