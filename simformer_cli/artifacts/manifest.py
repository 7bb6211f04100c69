"""The manifest header every artifact carries, and the pieces it is made of.

Each stage defines its own manifest as a subclass of :class:`ManifestBase` with a literal ``kind``,
its own ``params`` and ``summary`` models and any kind-specific fields. All models are frozen and
forbid unknown fields, so a hand-edited or foreign manifest fails validation instead of being
half-understood.
"""

from __future__ import annotations

import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from simformer_cli import __version__

ArtifactKind = Literal["split", "model", "predictions", "pseudolabels", "metrics"]


class Frozen(BaseModel):
    """Base of every manifest model: immutable, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class OmitsAbsent(BaseModel):
    """A manifest whose ``OPTIONAL_FIELDS`` are left out of its JSON when they are None, so that
    manifests of runs that do not use them keep the bytes and digests they always had."""

    OPTIONAL_FIELDS: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for key in self.OPTIONAL_FIELDS:
            if data.get(key) is None:
                data.pop(key, None)
        return data


class ArtifactRef(Frozen):
    """An input artifact: where it was and the digest of its manifest when it was read."""

    path: str
    kind: ArtifactKind
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")

    @classmethod
    def of(cls, path: Path | str, manifest: ManifestBase, digest: str) -> ArtifactRef:
        return cls(path=str(Path(path).absolute()), kind=manifest.kind, digest=digest)


class DatasetFingerprint(Frozen):
    """Identity of raw dataset files: which reader, which layout, and a digest of every file's bytes."""

    name: str
    layout: str
    files: int = Field(ge=0)
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")


class Inputs(Frozen):
    artifacts: dict[str, ArtifactRef] = Field(default_factory=dict)
    dataset: DatasetFingerprint | None = None


class ArraySpec(Frozen):
    """Shape and dtype an array must have for the artifact to be complete."""

    shape: list[int]
    dtype: str


class LabelFile(Frozen):
    """A file that gave labels to a split (a tag file, a COCO annotation file) and its sha256."""

    role: Literal["tags", "annotations", "val-annotations"]
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class LabelSources(Frozen):
    """Where a split's base masks and novel image-level labels came from."""

    base_masks: str = Field(description="e.g. 'label PNGs', 'COCO JSON annotations'")
    novel_labels: Literal["derived from full masks", "tags"]
    files: list[LabelFile] = Field(default_factory=list)


class Provenance(OmitsAbsent, Frozen):
    """Where and how the artifact was made; informative only, not part of the digest."""

    OPTIONAL_FIELDS = ("labels", "threads")

    command: list[str] = Field(default_factory=list)
    dataset_root: str | None = None
    host: str | None = None
    threads: int | None = None  # CPU threads of the process: float sums, and so weights, depend on it
    labels: LabelSources | None = None  # splits only

    @classmethod
    def of_this_run(cls, dataset_root: str | None = None, labels: LabelSources | None = None,
                    threads: int | None = None) -> Provenance:
        """This process's command line, host, (splits) label sources and (where it computed with
        torch) thread count."""
        return cls(command=list(sys.argv), dataset_root=dataset_root, host=socket.gethostname(), labels=labels,
                   threads=threads)


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


class ManifestBase(Frozen):
    """Common header. Subclasses narrow ``kind`` and add ``params`` and ``summary``."""

    kind: ArtifactKind
    schema_version: int
    created_at: datetime = Field(default_factory=utc_now)
    tool_version: str = __version__
    inputs: Inputs = Field(default_factory=Inputs)
    arrays: dict[str, ArraySpec] = Field(default_factory=dict)
    files: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Every file the artifact stores ('/'-separated path inside it, manifest.json aside) with its "
                    "size in bytes, listed when it was committed; opening the artifact checks each one.")
    provenance: Provenance = Field(default_factory=Provenance)

    def made_from(self, digest: str, role: str = "split") -> bool:
        """Whether this artifact was made from the artifact with that digest, as its input ``role``."""
        ref = self.inputs.artifacts.get(role)
        return ref is not None and ref.digest == digest
