"""Crashes at the exact moments a random kill rarely hits: every file-system step of a commit, between
the creation of two arrays of a resumable staging folder, half-way through deleting checkpoints,
and the leftovers of writers that were killed outright."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import zarr

from simformer_cli.artifacts.manifest import ArraySpec, Frozen, ManifestBase
from simformer_cli.artifacts.store import commit, open_artifact, staged_artifact
from simformer_cli.errors import ArtifactError


class Crash(BaseException):
    """Stands for SIGKILL: nothing after it runs (BaseException, so no cleanup code catches it)."""


class ToyParams(Frozen):
    size: int


class ToyManifest(ManifestBase):
    kind: Literal["metrics"] = "metrics"
    schema_version: Literal[1] = 1
    params: ToyParams


def write_toy(out: Path, size: int, crash_at: int | None = None, monkeypatch=None) -> None:  # noqa: ANN001
    with staged_artifact(out, kind="metrics") as staging:
        group = zarr.open_group(store=str(staging), mode="w")
        group.create_array(name="values", shape=(size,), dtype="int32", chunks=(size,))
        group["values"][...] = np.arange(size, dtype=np.int32)
        manifest = ToyManifest(params=ToyParams(size=size), arrays={"values": ArraySpec(shape=[size], dtype="int32")})
        if crash_at is not None:
            calls = {"n": 0}
            for name in ("rename", "replace", "fsync"):
                real = getattr(os, name)

                def step(*args, _real=real, **kwargs):  # noqa: ANN002, ANN003, ANN202
                    calls["n"] += 1
                    if calls["n"] == crash_at:
                        raise Crash
                    return _real(*args, **kwargs)

                monkeypatch.setattr(os, name, step)
        try:
            commit(staging, out, manifest)
        finally:
            if monkeypatch is not None:
                monkeypatch.undo()


def state_of(out: Path) -> int | None:
    """None when the readers refuse ``out``, else the size of the complete toy artifact there."""
    try:
        manifest, _, group = open_artifact(out, ToyManifest)
    except ArtifactError:
        assert not out.exists(), "something is at the output path but the readers refuse it"
        return None
    assert np.array_equal(group["values"][...], np.arange(manifest.params.size))
    return manifest.params.size


@pytest.mark.parametrize("replacing", [False, True])
def test_a_crash_at_every_step_of_a_commit_leaves_the_old_artifact_or_none(tmp_path: Path, monkeypatch,
                                                                          replacing: bool) -> None:  # noqa: ANN001
    seen = set()
    for crash_at in range(1, 20):
        out = tmp_path / f"case{crash_at}" / "toy.zarr"
        if replacing:
            write_toy(out, 4)
        try:
            write_toy(out, 6, crash_at, monkeypatch)
        except Crash:
            state = state_of(out)
            assert state in ((None, 4, 6) if replacing else (None, 6))  # old, none, or the new one complete
            seen.add(state)
            write_toy(out, 6)  # the rerun
            assert state_of(out) == 6
            assert sorted(p.name for p in out.parent.iterdir()) == [".toy.zarr.lock", "toy.zarr"]
        else:
            assert state_of(out) == 6
            break
    else:
        pytest.fail("commit never finished")
    assert None in seen and 6 in seen and (4 in seen if replacing else True)


def test_leftovers_of_killed_writers_are_removed_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "toy.zarr"
    for name in (".toy.zarr.staging-4242", ".toy.zarr.replaced-17", ".toy.zarr.partial", ".toy.zarr.staging-x",
                 ".toy.zarr.staging-1.zarr.staging-2", ".other.zarr.staging-5"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "chunk").write_bytes(b"x")
    write_toy(out, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        ".toy.zarr.lock", "toy.zarr", ".toy.zarr.partial", ".toy.zarr.staging-x", ".toy.zarr.staging-1.zarr.staging-2",
        ".other.zarr.staging-5"])


def test_infer_killed_between_two_array_creations_continues(tmp_path: Path, monkeypatch, synthetic_split: Path) -> None:  # noqa: ANN001
    from simformer_cli.artifacts.predictions import PredictionsArtifact
    from simformer_cli.pipeline.infer import run_infer
    from simformer_cli.pipeline.train import run_train

    model = run_train(split=synthetic_split, out=tmp_path / "model.zarr", iters=1, batch_size=2, device="cpu").path
    real = zarr.Group.create_array
    calls = {"n": 0}

    def create_array(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 2:  # "labels" exists, "sizes" not yet
            raise Crash
        return real(self, *args, **kwargs)

    monkeypatch.setattr(zarr.Group, "create_array", create_array)
    out = tmp_path / "pred.zarr"
    with pytest.raises(Crash):
        run_infer(model=model, split=synthetic_split, out=out, device="cpu")
    monkeypatch.setattr(zarr.Group, "create_array", real)
    assert (tmp_path / ".pred.zarr.partial" / "labels" / "zarr.json").is_file()
    assert not (tmp_path / ".pred.zarr.partial" / "sizes").exists()
    resumed = PredictionsArtifact(run_infer(model=model, split=synthetic_split, out=out, device="cpu").path)
    straight = PredictionsArtifact(run_infer(model=model, split=synthetic_split, out=tmp_path / "s.zarr", device="cpu").path)
    assert resumed.count() == straight.count()
    for index in range(straight.count()):
        assert np.array_equal(resumed.label(index), straight.label(index))


def test_a_kill_while_checkpoints_are_deleted_never_leaves_one_that_looks_complete(
        tmp_path: Path, monkeypatch, synthetic_split: Path) -> None:  # noqa: ANN001
    import shutil

    import simformer_cli.pipeline.train as train_module
    import simformer_cli.training.checkpoint as checkpoint_module
    from simformer_cli.training.checkpoint import latest_checkpoint

    partial = tmp_path / ".m.zarr.partial" / "checkpoints"
    real_rmtree = shutil.rmtree

    def killed_rmtree(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if Path(path) == partial:
            for step in Path(path).glob("step-*"):  # the tensors go first, then the kill
                (step / "tensors.safetensors").unlink(missing_ok=True)
            raise Crash
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.shutil, "rmtree", killed_rmtree)
    with pytest.raises(Crash):
        train_module.run_train(split=synthetic_split, out=tmp_path / "m.zarr", iters=2, batch_size=2,
                               checkpoint_every=1, device="cpu")
    assert any(partial.glob("step-*"))  # the folder of the last checkpoint is still there ...
    assert latest_checkpoint(partial) is None  # ... but --resume is never offered a half one
