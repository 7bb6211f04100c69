"""Canonical JSON and content digests: the identity of manifests and raw dataset files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Manifest fields that record when and where a run happened, not what it produced.
#: They are left out of the digest so the same inputs give the same digest on any machine.
UNDIGESTED_FIELDS = frozenset({"created_at", "provenance"})


def canonical_json(value: Any) -> bytes:
    """Stable bytes for a JSON-able value: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    """sha256 hex digest of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_digest(manifest_json: dict[str, Any]) -> str:
    """Digest of a manifest (as produced by ``model_dump(mode="json")``) without its provenance."""
    identity = {key: value for key, value in manifest_json.items() if key not in UNDIGESTED_FIELDS}
    return sha256_of(canonical_json(identity))


def files_fingerprint(file_digests: Iterable[tuple[str, str]]) -> str:
    """Fingerprint of raw dataset files from (relative path, sha256 hex) pairs, order-independent."""
    lines = sorted(f"{path}\t{digest}" for path, digest in set(file_digests))
    return sha256_of("\n".join(lines).encode("utf-8"))
