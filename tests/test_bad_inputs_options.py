"""The bad-input catalogue, continued: numeric options and settings that used to reach the work (an
``internal error``, a half-made output folder, a run that allocates without end) are refused before
anything is written, in one line; running out of memory anyway is one line saying what to reduce.

Same contract and machinery as ``test_bad_inputs.py`` (``refusals.py``); the messages land in the
generated table of ``docs/bad_inputs.md``.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refusals import (  # noqa: F401 - fixtures
    Refusals, copy_artifact, edit_manifest, refusals, shared, split_args, tree_state,
)


def train_args(shared, tmp_path: Path, *extra: str) -> list:  # noqa: ANN001
    return ["train", "--split", shared["split"], "--out", tmp_path / "m.zarr", "--device", "cpu", *extra]


# ---------------------------------------------------------------- train and retrain


@pytest.mark.parametrize(("case", "value", "fragments"), [
    # 18 images are cut into 2 micro-batches of 9 (at most 16 each), and 9 images are no whole pairs
    ("option-batch-size-micro-batches-18", "18", ["cannot be cut into 2", "16 and 20"]),
    ("option-batch-size-micro-batches-100", "100", ["cannot be cut into 8", "96 and 112"]),
    ("option-batch-size-too-large", "100000", ["--batch-size 100000"]),
])
def test_global_batch_that_the_loop_cannot_cut(refusals: Refusals, shared, tmp_path: Path, case: str, value: str,
                                               fragments: list[str]) -> None:  # noqa: ANN001
    refusals.check(case, f"`train --batch-size {value}`", train_args(shared, tmp_path, "--batch-size", value),
                   f"--batch-size {value}", *fragments)
    assert not (tmp_path / ".m.zarr.partial").exists()


def test_retrain_batch_that_the_loop_cannot_cut(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    # retrain trains without pairs: 34 images make 4 micro-batches of 8.5
    refusals.check("option-batch-size-micro-batches-retrain", "`retrain --batch-size 34`",
                   ["retrain", "--split", shared["split"], "--pseudolabels", shared["pseudo"], "--out",
                    tmp_path / "rt.zarr", "--device", "cpu", "--batch-size", "34"], "32 and 36")


@pytest.mark.parametrize(("case", "option", "value", "fragment"), [
    ("option-lr-inf", "--lr", "inf", "finite"),
    ("option-lr-nan", "--lr", "nan", "finite"),
    ("option-lr-huge", "--lr", "1e300", "at most 10"),
    ("option-seed-too-large", "--seed", str(2**70), "9223372036854775807"),
    ("option-iters-too-large", "--iters", str(10**23), "100000000"),
    ("option-workers-too-many-train", "--workers", "100000", "--workers 100000"),
    ("option-checkpoint-every-negative", "--checkpoint-every", "-5", "--checkpoint-every -5"),
    ("option-threads-zero", "--threads", "0", "--threads 0"),
    ("option-threads-too-many", "--threads", "100000", "--threads 100000"),
])
def test_numeric_training_options_out_of_range(refusals: Refusals, shared, tmp_path: Path, case: str, option: str,
                                               value: str, fragment: str) -> None:  # noqa: ANN001
    refusals.check(case, f"`train {option} {value}`", train_args(shared, tmp_path, option, value), option, fragment)


@pytest.mark.parametrize(("case", "setting", "fragment"), [
    ("set-lr-infinite", "optim.lr=Infinity", "finite"),
    ("set-hidden-dim-huge", "model.hidden_dim=1000000000000", "4096"),
    ("set-loss-weight-huge", "loss.dice_weight=1e30", "1000"),
    ("set-crop-huge", "augment.crop=1000000", "16384"),
    ("set-regularizer-setting-while-off", "loss.dfr_weight=2", "--regularizer dfr"),
    ("set-partition-setting-while-off", "loss.partition_presence_share=0.1", "loss.partition=true"),
    ("set-novel-mil-setting-while-off", "loss.novel_mil_weight=2", "loss.novel_mil=true"),
    ("set-elimination-setting-while-off", "loss.elimination_share=0.1", "loss.elimination=true"),
])
def test_absurd_set_overrides(refusals: Refusals, shared, tmp_path: Path, case: str, setting: str,
                              fragment: str) -> None:  # noqa: ANN001
    refusals.check(case, f"`train --set {setting}`", train_args(shared, tmp_path, "--set", setting),
                   f"--set {setting}", fragment)


@pytest.mark.parametrize(("case", "extra", "what", "fragment"), [
    ("option-regularizer-unknown", ["--regularizer", "crf"], "`train --regularizer crf`", "none, dfr"),
    ("option-regularizer-with-cam", ["--regularizer", "dfr", "--method", "cam"],
     "`train --regularizer dfr --method cam` (the CAM baseline has its own objective)", "method cam"),
    ("set-dfr-similarity-kernel-without-the-net",
     ["--regularizer", "dfr", "--set", "loss.dfr_deep_kernel=similarity", "--set", "loss.similarity=false",
      "--set", "loss.distillation=false"],
     "`train --regularizer dfr --set loss.dfr_deep_kernel=similarity` with the similarity net off", "similarity=True"),
])
def test_regularizer_settings_that_cannot_apply(refusals: Refusals, shared, tmp_path: Path, case: str,
                                                extra: list[str], what: str, fragment: str) -> None:  # noqa: ANN001
    refusals.check(case, what, train_args(shared, tmp_path, *extra), fragment)


# ---------------------------------------------------------------- infer, pseudolabel, viz, split


@pytest.mark.parametrize(("case", "scales", "fragment"), [
    ("option-scales-too-large", "40", "at most 4 each"),
    ("option-scales-too-many", ",".join(["1"] * 17), "at most 16 factors"),
])
def test_absurd_test_time_scales(refusals: Refusals, shared, tmp_path: Path, case: str, scales: str,
                                 fragment: str) -> None:  # noqa: ANN001
    shown = scales if len(scales) < 10 else "1,1,...,1 (17 factors)"
    refusals.check(case, f"`infer --scales {shown}`",
                   ["infer", "--model", shared["model"], "--split", shared["split"], "--out", tmp_path / "p.zarr",
                    "--device", "cpu", "--scales", scales], "--scales", fragment)


def test_absurd_pseudolabel_scales_and_min_score(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    args = ["pseudolabel", "--model", shared["model"], "--split", shared["split"], "--out", tmp_path / "pl.zarr",
            "--device", "cpu"]
    refusals.check("option-scales-too-large-pseudolabel", "`pseudolabel --scales 0.5,40`", [*args, "--scales", "0.5,40"],
                   "--scales", "at most 4 each")
    refusals.check("option-min-score-nan", "`pseudolabel --min-score nan`", [*args, "--min-score", "nan"], "--min-score")
    grouped = [*args, "--among", "groups"]
    refusals.check("option-groups-too-few", "`pseudolabel --among groups --groups 1`", [*grouped, "--groups", "1"],
                   "--groups")
    refusals.check("option-appears-not-a-share", "`pseudolabel --among groups --appears 1.5`",
                   [*grouped, "--appears", "1.5"], "--appears")
    refusals.check("option-appears-nan", "`pseudolabel --among groups --appears nan`", [*grouped, "--appears", "nan"],
                   "--appears")
    refusals.check("option-unnamed-without-groups", "`pseudolabel --among image --unnamed ignore`",
                   [*args, "--among", "image", "--unnamed", "ignore"], "--unnamed", "--among groups")


@pytest.mark.parametrize("value", ["65", "-1"])
def test_boundary_band_out_of_range(refusals: Refusals, shared, tmp_path: Path, value: str) -> None:  # noqa: ANN001
    refusals.check(f"option-boundary-band-{'too-wide' if value == '65' else 'negative'}", f"`eval --boundary-band {value}`",
                   ["eval", "--predictions", shared["predictions"], "--split", shared["split"], "--out",
                    tmp_path / "m.zarr", "--boundary-band", value], f"--boundary-band {value}", "0 (off) to 64")


def test_negative_viz_limit(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    refusals.check("option-limit-negative", "`viz --limit -3` (0 means all; a negative number meant all too)",
                   ["viz", "--predictions", shared["predictions"], "--split", shared["split"], "--out", tmp_path / "viz",
                    "--limit", "-3"], "--limit -3")


@pytest.mark.parametrize(("case", "extra", "fragment"), [
    ("option-workers-too-many-split", ["--workers", "100000"], "--workers 100000"),
    ("option-seed-too-large-split", ["--seed", str(2**64)], "--seed"),
])
def test_numeric_split_options_out_of_range(refusals: Refusals, shared, tmp_path: Path, case: str, extra: list[str],
                                            fragment: str) -> None:  # noqa: ANN001
    args = [*split_args(shared["data"], tmp_path / "s.zarr"), *extra]
    if "--workers" in extra:
        args = args[: args.index("--workers")] + args[args.index("--workers") + 2:] + extra
    refusals.check(case, f"`split {' '.join(extra)}`", args, fragment)


def test_synthetic_options_are_named(refusals: Refusals, tmp_path: Path) -> None:
    refusals.check("option-synthetic-seed-too-large", "`split --synthetic-seed 2**64`",
                   ["split", "--dataset", "synthetic", "--synthetic-seed", str(2**64), "--out", tmp_path / "s.zarr"],
                   "--synthetic-seed")
    refusals.check("option-synthetic-train-too-many", "`split --synthetic-train 10000000`",
                   ["split", "--dataset", "synthetic", "--synthetic-train", "10000000", "--out", tmp_path / "s.zarr"],
                   "--synthetic-train 10000000")


# ---------------------------------------------------------------- pipeline: refused before the chain starts


@pytest.mark.parametrize(("case", "extra", "fragment"), [
    ("pipeline-retrain-iters-zero", ["--retrain-iters", "0"], "--retrain-iters 0"),
    ("pipeline-iters-too-large", ["--iters", str(10**12)], "--iters"),
    ("pipeline-batch-size-micro-batches", ["--batch-size", "18"], "16 and 20"),
    ("pipeline-batch-size-odd", ["--batch-size", "5"], "must be even"),
    ("pipeline-scales-too-large", ["--pseudo-scales", "40"], "--pseudo-scales"),
    ("pipeline-rounds-zero", ["--rounds", "0"], "--rounds 0"),
    ("pipeline-set-unknown-key", ["--set", "loss.elimnation=true"], "did you mean loss.elimination"),
])
def test_pipeline_options_are_refused_before_any_stage(refusals: Refusals, tmp_path: Path, case: str,
                                                       extra: list[str], fragment: str) -> None:
    refusals.check(case, f"`pipeline {' '.join(extra)}`",
                   ["pipeline", "--workdir", tmp_path / "w", "--synthetic-train", "8", "--synthetic-val", "4",
                    "--synthetic-size", "32", "--device", "cpu", *extra], fragment)
    assert not (tmp_path / "w").exists()  # not even the split was made


# ---------------------------------------------------------------- forged settings in a model manifest


@pytest.mark.parametrize(("case", "what", "change", "fragment"), [
    ("manifest-forged-hidden-dim", "`hidden_dim` 1e12",
     lambda body: body["params"]["settings"]["model"].update(hidden_dim=1e12), "hidden_dim"),
    ("manifest-forged-ignore-index", "`ignore_index` 1e30",
     lambda body: body.update(ignore_index=1e30), "ignore_index"),
    ("manifest-forged-ignore-index-wrong", "`ignore_index` 7 (a class id)",
     lambda body: body.update(ignore_index=7), "ignore_index 7"),
    ("manifest-forged-num-queries", "`num_queries` 1e9",
     lambda body: body["params"]["settings"]["model"].update(num_queries=10**9), "num_queries"),
    ("manifest-forged-test-crop", "`augment.crop` 1e9 (infer's test size)",
     lambda body: body["params"]["settings"]["augment"].update(crop=10**9), "crop"),
    ("manifest-forged-num-classes", "`num_classes` 1000 beside 6 class names",
     lambda body: body["params"]["settings"]["model"].update(num_classes=1000), "class"),
])
def test_forged_model_settings_are_refused_at_read(refusals: Refusals, shared, tmp_path: Path, case: str, what: str,
                                                   change, fragment: str) -> None:  # noqa: ANN001
    model = copy_artifact(shared["model"], tmp_path / "model.zarr")
    edit_manifest(model, change, keep_digest_valid=True)
    refusals.check(case, f"a model manifest with {what} and a valid digest",
                   ["infer", "--model", model, "--split", shared["split"], "--out", tmp_path / "p.zarr", "--device",
                    "cpu"], "manifest field", fragment)


# ---------------------------------------------------------------- out of memory


def _memory_probe_kib() -> int:
    """Peak virtual memory of a process that imports what infer imports: the cap's baseline."""
    code = "import simformer_cli.cli, simformer_cli.pipeline.infer, torch; print(open('/proc/self/status').read())"
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    return int(next(line for line in probe.stdout.splitlines() if line.startswith("VmPeak:")).split()[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and caps memory with RLIMIT_AS")
def test_real_out_of_memory_is_one_line(refusals: Refusals, shared, tmp_path: Path, tmp_path_factory) -> None:  # noqa: ANN001
    """A real one: infer under a memory cap (as ``ulimit -v``) 600 MiB above what its imports take, on
    a folder holding a 6000x6000 photo (its decoded pixels, their float copy and the class scores at
    its size need far more)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((6000, 6000, 3), 90, np.uint8)).save(photos / "big.png")
    cap = (_memory_probe_kib() + 600 * 1024) * 1024
    where = tmp_path_factory.mktemp("oom-out")  # outside the checked roots: infer keeps its partial work

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    before = tree_state(*refusals.roots)
    done = subprocess.run([sys.executable, "-m", "simformer_cli", "infer", "--model", str(shared["model"]),
                           "--images", str(photos), "--out", str(where / "p.zarr"), "--device", "cpu"],
                          capture_output=True, text=True, preexec_fn=limit, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    refusals.verify("out-of-memory-infer", "`infer` runs out of memory (a memory cap, as `ulimit -v`, and a "
                    "6000x6000 photo)", done.returncode, done.stdout, done.stderr, before, "ran out of memory",
                    "--scales")
    # Like a full disk: a resumable stage keeps its hidden partial folder for the rerun.
    assert sorted(p.name for p in where.iterdir()) == [".p.zarr.lock", ".p.zarr.partial"]


def test_torch_allocator_failure_is_one_line(refusals: Refusals, shared, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """Torch's own out-of-memory error (DefaultCPUAllocator), from a real allocation too large to make."""
    import torch

    import simformer_cli.pipeline.train as train_module

    real = train_module.resolve_settings

    def allocate_then_resolve(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        torch.empty(1 << 62, dtype=torch.uint8)  # raises before anything is written
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "resolve_settings", allocate_then_resolve)
    refusals.check("out-of-memory-train", "`train` runs out of memory (torch cannot allocate)",
                   train_args(shared, tmp_path, "--batch-size", "2"), "ran out of memory", "--batch-size")
