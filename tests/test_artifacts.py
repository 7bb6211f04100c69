"""Manifests and the artifact store: round trips, atomic commit, and every refusal on read."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Literal

import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from simformer_cli.artifacts.digest import manifest_digest
from simformer_cli.artifacts.manifest import ArraySpec, Frozen, ManifestBase
from simformer_cli.artifacts.schemas import MANIFEST_MODELS, schema_files
from simformer_cli.artifacts.store import commit, open_artifact, read_manifest, staged_artifact
from simformer_cli.errors import ArtifactError, UserError

MANIFESTS_DIR = Path(__file__).resolve().parents[1] / "manifests"


class ToyParams(Frozen):
    size: int


class ToyManifest(ManifestBase):
    kind: Literal["metrics"] = "metrics"
    schema_version: Literal[1] = 1
    params: ToyParams


class OtherManifest(ManifestBase):
    kind: Literal["model"] = "model"
    schema_version: Literal[1] = 1


def write_toy(out: Path, size: int = 4) -> str:
    with staged_artifact(out, kind="metrics") as staging:
        group = zarr.open_group(store=str(staging), mode="w")
        group.create_array(name="values", shape=(size,), dtype="int32", chunks=(size,))
        manifest = ToyManifest(params=ToyParams(size=size), arrays={"values": ArraySpec(shape=[size], dtype="int32")})
        return commit(staging, out, manifest)


def test_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "toy.zarr"
    digest = write_toy(out)
    manifest, read_digest, group = open_artifact(out, ToyManifest)
    assert read_digest == digest and manifest.params.size == 4
    assert group["values"].shape == (4,)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".toy.zarr.lock", "toy.zarr"]


def test_digest_ignores_created_at_only() -> None:
    a = ToyManifest(params=ToyParams(size=1)).model_dump(mode="json")
    b = dict(a, created_at="2000-01-01T00:00:00Z")
    assert manifest_digest(a) == manifest_digest(b)
    assert manifest_digest(a) != manifest_digest(dict(a, params={"size": 2}))


def test_failure_inside_staging_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "toy.zarr"
    with pytest.raises(RuntimeError):
        with staged_artifact(out, kind="metrics") as staging:
            (staging / "half").write_text("x")
            raise RuntimeError("crash")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == [".toy.zarr.lock"]


def test_replacing_keeps_one_complete_artifact(tmp_path: Path) -> None:
    out = tmp_path / "toy.zarr"
    write_toy(out, 4)
    write_toy(out, 6)
    manifest, _, group = open_artifact(out, ToyManifest)
    assert manifest.params.size == 6 and group["values"].shape == (6,)


def test_not_an_artifact(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no such artifact"):
        read_manifest(tmp_path / "missing.zarr", ToyManifest)
    (tmp_path / "half.zarr").mkdir()
    with pytest.raises(ArtifactError, match="not a simformer artifact"):
        read_manifest(tmp_path / "half.zarr", ToyManifest)


def test_wrong_kind(tmp_path: Path) -> None:
    write_toy(tmp_path / "toy.zarr")
    with pytest.raises(ArtifactError, match="is a 'metrics' artifact, but a 'model'"):
        read_manifest(tmp_path / "toy.zarr", OtherManifest)


def _edit(path: Path, change) -> None:  # noqa: ANN001
    document = json.loads((path / "manifest.json").read_text())
    change(document)
    (path / "manifest.json").write_text(json.dumps(document))


def test_edited_manifest(tmp_path: Path) -> None:
    out = tmp_path / "toy.zarr"
    write_toy(out)
    _edit(out, lambda d: d["manifest"]["params"].update(size=5))
    with pytest.raises(ArtifactError, match="digest mismatch"):
        read_manifest(out, ToyManifest)


def test_unsupported_schema_version(tmp_path: Path) -> None:
    out = tmp_path / "toy.zarr"
    write_toy(out)
    _edit(out, lambda d: d["manifest"].update(schema_version=99))
    with pytest.raises(ArtifactError, match="schema version 99"):
        read_manifest(out, ToyManifest)


def test_unknown_field_with_valid_digest_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "toy.zarr"
    write_toy(out)

    def add_field(document: dict) -> None:
        document["manifest"]["surprise"] = 1
        document["digest"] = manifest_digest(document["manifest"])

    _edit(out, add_field)
    with pytest.raises(ArtifactError, match="surprise"):
        read_manifest(out, ToyManifest)


def test_unreadable_manifest(tmp_path: Path) -> None:
    out = tmp_path / "toy.zarr"
    write_toy(out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable"):
        read_manifest(out, ToyManifest)


def test_missing_array(tmp_path: Path) -> None:
    out = tmp_path / "toy.zarr"
    write_toy(out)
    import shutil

    shutil.rmtree(out / "values")
    with pytest.raises(ArtifactError, match="'values' is missing"):
        open_artifact(out, ToyManifest)


def test_output_that_is_not_an_artifact_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "file.txt").write_text("mine")
    with pytest.raises(UserError, match="not a simformer artifact"):
        write_toy(out)
    assert (out / "file.txt").read_text() == "mine"


def _hold_lock(out: str, ready, release) -> None:  # noqa: ANN001
    with staged_artifact(Path(out), kind="metrics"):
        ready.set()
        release.wait(10)


def test_second_writer_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "toy.zarr"
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(out), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(UserError, match="another simformer process is writing"):
            write_toy(out)
    finally:
        release.set()
        holder.join(30)
    assert not out.exists()
    time.sleep(0)
    write_toy(out)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.sampled_from(["kind", "schema_version", "params", "junk"]),
                       st.one_of(st.integers(), st.text(max_size=5), st.none()), min_size=1))
def test_random_manifests_never_crash_the_reader(tmp_path_factory, body: dict) -> None:  # noqa: ANN001
    out = tmp_path_factory.mktemp("m") / "x.zarr"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"digest": manifest_digest(body), "manifest": body}))
    with pytest.raises(ArtifactError):
        read_manifest(out, ToyManifest)


def test_checked_in_schemas_match_the_models() -> None:
    files = schema_files()
    assert set(files) == {f"{kind}.schema.json" for kind in MANIFEST_MODELS}
    for name, text in files.items():
        path = MANIFESTS_DIR / name
        assert path.is_file(), f"{path} missing: run `simformer schema`"
        assert path.read_text() == text, f"{path} is stale: run `simformer schema`"
