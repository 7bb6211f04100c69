"""Writing artifacts atomically and reading them back with every check a later stage relies on.

An artifact is a directory ``NAME.zarr`` holding a zarr v3 group and ``manifest.json``:
``{"digest": "sha256:...", "manifest": {...}}``. Writers build the whole directory under a hidden
staging name beside the target, write the manifest last, then rename it into place, so a crash at
any moment leaves the previous artifact or none. A directory without a valid manifest is refused.

The manifest lists every stored file with its size, and the group's attributes carry the plan the
manifest records, so that opening refuses missing, resized or foreign files and manifests copied
from elsewhere; reads go through a store pinned to the manifest read at open (``inventory``). A
stage publishes nothing when one of its input artifacts was rebuilt while it ran.
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

from simformer_cli.artifacts.digest import canonical_json, manifest_digest, sha256_of
from simformer_cli.artifacts.inventory import (
    MANIFEST_FILE,
    PLAN_ATTRIBUTE,
    InputChanged,
    Listing,
    PinnedStore,
    file_signature,
    plan_stamp,
    rebuilt_message,
    repair_hint,
    take_inventory,
)
from simformer_cli.artifacts.layout import dtype_name
from simformer_cli.artifacts.manifest import Inputs, ManifestBase
from simformer_cli.errors import ArtifactError, UserError

M = TypeVar("M", bound=ManifestBase)
RESUME_KEY_FILE = ".resume-key"
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


def fsync_dir(path: Path) -> None:
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


def _real_target(out: Path) -> Path:
    """Where an output really goes: ``out`` made absolute, symbolic links followed (a link to an
    artifact then keeps pointing at the rebuilt artifact, and nothing is left beside the link)."""
    return Path(os.path.realpath(Path(out).absolute()))


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


#: How a stage names each of its input artifacts on the command line.
INPUT_OPTIONS = {"init": "--init-from"}


def _kind_on_disk(path: Path) -> str | None:
    """The ``kind`` an artifact's manifest.json states (digest not checked), or None if unreadable."""
    try:
        body = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8")).get("manifest", {})
        return body.get("kind") if isinstance(body, dict) else None
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None


def _same_place(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def check_output_path(out: Path, kind: str | None = None, inputs: Inputs | None = None) -> None:
    """Refuse an ``--out`` whose writing would destroy something: anything but an empty folder or an
    artifact of the same ``kind``, an input of the same command, or a place inside an artifact."""
    out = Path(out).absolute()
    for name, ref in (inputs.artifacts.items() if inputs is not None else ()):
        if _same_place(out, Path(ref.path)):
            option = INPUT_OPTIONS.get(name, f"--{name}")
            raise UserError(f"{out}: is this command's {option} input; writing the output there would destroy it. "
                            "Choose another --out")
    for parent in out.parents:
        if is_artifact(parent):
            raise UserError(f"{out}: is inside the artifact {parent}; choose an --out outside it")
    if out.exists() and not (out.is_dir() and (is_artifact(out) or not any(out.iterdir()))):
        raise UserError(
            f"{out}: exists and is not a simformer artifact; refusing to overwrite it. "
            "Choose another --out or remove it yourself"
        )
    if kind is not None and out.is_dir() and is_artifact(out):
        there = _kind_on_disk(out)
        if there != kind:
            what = f"a {there!r} artifact" if there else "an artifact with an unreadable manifest"
            raise UserError(f"{out}: is {what}; this command writes a {kind!r} artifact and replaces only one of "
                            "that kind. Choose another --out or remove it yourself")


def partial_dir(out: Path) -> Path:
    """Where a resumable writer of ``out`` builds it, and leaves its pieces when interrupted."""
    out = _real_target(out)
    return out.parent / f".{out.name}.partial"


def pending_resume_key(out: Path) -> str | None:
    """The plan key (:func:`plan_key`) of the interrupted run that left pieces for ``out``, if any."""
    key_file = partial_dir(out) / RESUME_KEY_FILE
    return key_file.read_text() if key_file.is_file() else None


@contextlib.contextmanager
def staged_artifact(out: Path, *, kind: str, inputs: Inputs | None = None,
                    resume_key: str | None = None) -> Iterator[Path]:
    """Yield a private directory to build the artifact in; :func:`commit` publishes it.

    ``out`` is checked first (:func:`check_output_path`): only an artifact of ``kind`` that is not
    one of ``inputs`` is ever replaced. A symbolic link is followed: the artifact it points to is
    replaced and the link kept.

    Without ``resume_key`` the staging directory is fresh and removed on failure. With one, it is
    ``.NAME.partial`` and kept on failure, so a rerun with the same key can continue from the
    pieces already there (a different key starts over).
    """
    out = _real_target(out)
    check_output_path(out, kind, inputs)
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
            staging = partial_dir(out)
        try:
            if resume_key is not None:
                key_file = staging / RESUME_KEY_FILE
                if staging.exists() and (not key_file.is_file() or key_file.read_text() != resume_key):
                    shutil.rmtree(staging)
                staging.mkdir(exist_ok=True)
                key_file.write_text(resume_key)
            staging.mkdir(exist_ok=True)
            yield staging
        except BaseException as exc:
            if resume_key is None or isinstance(exc, InputChanged):  # work from a changed input is never resumed
                shutil.rmtree(staging, ignore_errors=True)
            if is_disk_full(exc):
                raise UserError(disk_full_message(out)) from None
            raise
        shutil.rmtree(staging, ignore_errors=True)  # only left if commit() was never called


def commit(staging: Path, out: Path, manifest: ManifestBase) -> str:
    """Write the manifest last, then move the finished artifact into place. Returns its digest."""
    return publish(staging, out, manifest)[1]


def publish(staging: Path, out: Path, manifest: M) -> tuple[M, str]:
    """:func:`commit`, returning the manifest as written (with its list of stored files) and its digest.

    The group's attributes get the manifest's plan stamp, then the manifest lists every file with
    its size. Refused (:class:`InputChanged`) when an input artifact it records was rebuilt since
    the stage read it.
    """
    out = _real_target(out)
    if not (staging / "zarr.json").is_file():  # every artifact is a zarr group, arrays or not
        zarr.create_group(store=str(staging), zarr_format=3)
    (staging / RESUME_KEY_FILE).unlink(missing_ok=True)
    zarr.open_group(store=str(staging), mode="r+", zarr_format=3).attrs[PLAN_ATTRIBUTE] = plan_stamp(
        manifest.model_dump(mode="json"))
    manifest = manifest.model_copy(update={"files": take_inventory(staging)})
    document = manifest_document(manifest)
    try:
        _write_file_atomically(staging / MANIFEST_FILE, json.dumps(document, indent=2).encode("utf-8"))
        fsync_dir(staging)
        _check_inputs_unchanged(manifest)
        if out.exists():
            old = out.parent / f".{out.name}.replaced-{os.getpid()}"
            os.rename(out, old)
            os.rename(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, out)
        fsync_dir(out.parent)
    except OSError as exc:
        if is_disk_full(exc):
            raise UserError(disk_full_message(out)) from None
        raise
    return manifest, document["digest"]


def _check_inputs_unchanged(manifest: ManifestBase) -> None:
    """Every input artifact still has the digest the stage recorded when it read it."""
    for ref in manifest.inputs.artifacts.values():
        try:
            current = _load_document(Path(ref.path))[0]["digest"]
        except ArtifactError:
            current = None
        if current != ref.digest:
            raise InputChanged(rebuilt_message(ref.path))


def manifest_document(manifest: ManifestBase) -> dict[str, Any]:
    body = manifest.model_dump(mode="json")
    return {"digest": manifest_digest(body), "manifest": body}


def _load_document(path: Path) -> tuple[dict[str, Any], tuple[int, int, int, int]]:
    """The manifest document and which file it was read from (see :func:`file_signature`)."""
    if not path.exists():
        raise ArtifactError(f"{path}: no such artifact; check the path or run the stage that makes it")
    if not path.is_dir() or not is_artifact(path):
        raise ArtifactError(
            f"{path}: not a simformer artifact (no {MANIFEST_FILE}); it may be from an interrupted run. "
            "Rerun the stage that makes it"
        )
    try:
        with open(path / MANIFEST_FILE, "rb") as handle:
            signature = file_signature(os.fstat(handle.fileno()))
            document = json.loads(handle.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: {MANIFEST_FILE} is unreadable ({exc}); rerun the stage that makes it") from None
    if not isinstance(document, dict) or set(document) != {"digest", "manifest"} or not isinstance(
        document["manifest"], dict
    ):
        raise ArtifactError(f"{path}: {MANIFEST_FILE} is not a simformer manifest; rerun the stage that makes it")
    return document, signature


def read_manifest(path: Path, model: type[M]) -> tuple[M, str]:
    """Read and check a manifest: kind, schema version, digest, then full validation."""
    return _read_manifest(Path(path), model)[:2]


def _read_manifest(path: Path, model: type[M]) -> tuple[M, str, tuple[int, int, int, int]]:
    document, signature = _load_document(path)
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
        field = f" field {where!r}" if where else ""  # a check of the whole manifest names no field
        raise ArtifactError(f"{path}: manifest{field}: {message}; rerun the stage that makes it") from None
    return manifest, document["digest"], signature


def open_artifact(path: Path, model: type[M]) -> tuple[M, str, zarr.Group]:
    """Open an artifact read-only after checking its manifest, that it belongs to the data beside it,
    that every listed array is complete and every listed file there at its size (``inventory``).
    The group reads through a :class:`PinnedStore`."""
    path = Path(path)
    manifest, digest, signature = _read_manifest(path, model)
    repair = repair_hint(manifest.kind, getattr(manifest, "stage", None))
    if not manifest.files:
        raise ArtifactError(f"{path}: the manifest lists no stored files (made by an older simformer); {repair}")
    listing = Listing(path=path, files=manifest.files, arrays=tuple(manifest.arrays), repair=repair,
                      signature=signature)
    try:  # simformer writes zarr v3 only: nothing else (e.g. v2 metadata with other codecs) is read
        group = zarr.open_group(store=PinnedStore(listing), mode="r", zarr_format=3)
    except ArtifactError:
        raise
    except Exception as exc:  # zarr raises several types for a damaged store
        raise ArtifactError(f"{path}: zarr group cannot be opened ({exc}); rerun the stage that makes it") from None
    if group.attrs.get(PLAN_ATTRIBUTE) != plan_stamp(manifest.model_dump(mode="json")):
        listing.check_pinned()
        raise ArtifactError(f"{path}: {MANIFEST_FILE} belongs to other data (the arrays were written for other inputs "
                            f"or settings; copied from another artifact?); {repair}")
    for name, spec in manifest.arrays.items():
        try:
            array = group[name]
        except KeyError:
            raise ArtifactError(f"{path}: array {name!r} is missing; the artifact is incomplete, rerun its stage") from None
        except ArtifactError:
            raise
        except Exception as exc:  # damaged or foreign array metadata
            raise ArtifactError(f"{path}: array {name!r} cannot be opened ({exc}); rerun the stage that makes it") from None
        if not isinstance(array, zarr.Array):
            raise ArtifactError(f"{path}: {name!r} is not an array; rerun the stage that makes it")
        if list(array.shape) != spec.shape or dtype_name(array) != spec.dtype:
            raise ArtifactError(
                f"{path}: array {name!r} is {dtype_name(array)}{list(array.shape)}, manifest says "
                f"{spec.dtype}{spec.shape}; rerun the stage that makes it"
            )
    listing.check_files()
    return manifest, digest, group


def plan_key(inputs: Any, params: Any) -> str:
    """Digest of what a run will use: keys resumable staging folders to one plan."""
    return sha256_of(canonical_json({"inputs": inputs.model_dump(mode="json"), "params": params.model_dump(mode="json")}))


def current_artifact(out: Path, model: type[M], inputs: Any, params: Any, *, force: bool) -> tuple[M, str] | None:
    """The artifact at ``out`` if it is valid and records exactly these inputs and params.

    A broken or foreign artifact there (missing or resized files included) counts as absent: the
    stage rebuilds it.
    """
    if force or not is_artifact(out):
        return None
    try:
        existing, digest, _ = open_artifact(out, model)
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
