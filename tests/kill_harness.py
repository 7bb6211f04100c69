"""Kill anywhere, the harness: interrupt a stage at a moment drawn from its own progress, run it
again, compare with an uninterrupted run. Shared by ``tests/test_kill_anywhere.py`` (a few moments
per stage), ``tests/test_signals_and_logs.py`` and ``benchmarks/kill_anywhere.py`` (many).

For each of split (a folder dataset, 2 ingest workers), train (tiny preset, ``--checkpoint-every 1``),
infer and pseudolabel (one image per shard), every trial starts the stage's real command line in a
subprocess and signals it at a moment drawn at random (seeded) from the stage's own progress: the
stage is told, through the ``SIMFORMER_TEST_HOLD`` test hook, to wait at the drawn step of its
writing phase (e.g. after training step 3, after predicting image 17) and says so on stderr. Then
the harness sends SIGKILL to the stage's process (or, in some trials, SIGINT to its process group,
as Ctrl-C in a terminal does). With ``jitter`` it first lets the stage go on and signals it a random
fraction of a step later, so that the moment falls inside a step's writes, not only between steps;
the stage then waits at the next step (or, after its last one, just before it exits) if it gets
there first, so the signal always reaches a running stage, however fast or loaded the machine is.
Then it checks:

- when the stage is held and after the signal, the output path holds nothing the artifact readers
  (what every later stage opens its inputs with) accept unless it is complete and equal to the
  uninterrupted result; a half-written output is never there;
- no process of the stage outlives it (ingest workers die with their parent; each is waited for
  through a pidfd, an event, not polled);
- after SIGINT: exit status 130 and a one-line hint on how to continue;
- running the same command again (``--resume`` added for train when a checkpoint exists, which is
  what a user does) finishes, leaves nothing beside the output but the artifact and its lock file,
  and gives exactly the uninterrupted result: every zarr array (and for train the safetensors
  weights and the loss log) bit for bit.

Infer and pseudolabel run through a two-line wrapper that sets ``MAX_SHARD_IMAGES = 1`` before
calling the CLI's ``main()`` (as ``tests/test_infer_eval.py`` does in-process), so that a run of a
few dozen images has a few dozen shards to be killed between and inside.
"""
from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
import warnings
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SMALL_SHARDS = ("import simformer_cli.artifacts.layout as store; store.MAX_SHARD_IMAGES = 1; "
                "from simformer_cli.cli import main; main()")
TRAIN_STEPS = 6
TRAIN_OPTIONS = ["--iters", str(TRAIN_STEPS), "--batch-size", "4", "--checkpoint-every", "1", "--device", "cpu"]
HINT = "interrupted; run the same command again"
HOLD_ENV = "SIMFORMER_TEST_HOLD"  # the stages' test hook (simformer_cli.progress.hold_point)
AT_EXIT = "exit@0"  # where a stage holds after its work, just before it exits


def stage_env() -> dict[str, str]:
    # One thread per process: on a shared or small machine two OpenMP threads that wait for a busy
    # core make a tiny model many times slower, and the kill moments would mean little.
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


# ---------------------------------------------------------------- what an artifact holds


def zarr_contents(path: Path) -> dict[str, Any]:
    """Every array of the group, read whole, and the group attributes, by name."""
    import zarr

    group = zarr.open_group(store=str(path), mode="r", zarr_format=3)
    found: dict[str, Any] = {}
    warnings.filterwarnings("ignore", message="Object at manifest.json is not recognized")

    def walk(node: Any, prefix: str) -> None:
        found[f"{prefix}@attrs"] = json.dumps(dict(node.attrs), sort_keys=True)
        for name, child in node.members():
            key = f"{prefix}{name}"
            if isinstance(child, zarr.Array):
                found[key] = np.asarray(child[...])
            else:
                walk(child, key + "/")

    walk(group, "")
    return found


def manifest_body(path: Path) -> dict[str, Any]:
    return json.loads((path / "manifest.json").read_text())["manifest"]


def split_contents(path: Path) -> dict[str, Any]:
    contents = zarr_contents(path)
    document = json.loads((path / "manifest.json").read_text())
    contents["digest"] = document["digest"]  # same files, same settings -> the same digest
    return contents


def model_contents(path: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    contents: dict[str, Any] = {f"weights/{k}": v for k, v in load_file(str(path / "weights.safetensors")).items()}
    contents["train_log.jsonl"] = (path / "train_log.jsonl").read_text()
    body = manifest_body(path)
    contents["weights_sha256"] = body["weights_sha256"]
    contents["final_losses"] = json.dumps(body["summary"]["final_losses"], sort_keys=True)
    return contents


def predictions_contents(path: Path) -> dict[str, Any]:
    contents = zarr_contents(path)
    contents["params"] = json.dumps(manifest_body(path)["params"], sort_keys=True)
    return contents


def pseudolabels_contents(path: Path) -> dict[str, Any]:
    contents = zarr_contents(path)
    body = manifest_body(path)
    summary = {k: v for k, v in body["summary"].items() if k != "seconds"}
    contents["summary"] = json.dumps(summary, sort_keys=True)
    return contents


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    if a.keys() != b.keys():
        return [f"keys differ: {sorted(set(a) ^ set(b))}"]
    bad = []
    for key in a:
        x, y = a[key], b[key]
        same = (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.dtype == y.dtype
                and np.array_equal(x, y)) if isinstance(x, np.ndarray) else x == y
        if not same:
            bad.append(key)
    return bad


# ---------------------------------------------------------------- the stages


def open_split(path: Path) -> None:
    from simformer_cli.artifacts.split import SplitArtifact

    SplitArtifact(path)


def open_model(path: Path) -> None:
    from simformer_cli.pipeline.stage import load_model

    load_model(path)


def open_predictions(path: Path) -> None:
    from simformer_cli.artifacts.predictions import PredictionsArtifact

    PredictionsArtifact(path)


def open_pseudolabels(path: Path) -> None:
    from simformer_cli.artifacts.pseudolabels import PseudoLabelsManifest
    from simformer_cli.artifacts.store import open_artifact

    open_artifact(path, PseudoLabelsManifest)


@dataclass
class Stage:
    name: str
    out_name: str
    command: Callable[[Path, bool], list[str]]  # (out, resume) -> argv
    reader: Callable[[Path], None]  # how later stages open it; raises ArtifactError when refused
    contents: Callable[[Path], dict[str, Any]]
    points: list[str]  # the steps of its writing phase, in order, as the hold hook names them
    train: bool = False  # resumes with --resume from a checkpoint


def _steps(description: str, last: int) -> list[str]:
    return [f"{description}@{k}" for k in range(last + 1)]


def make_stages(inputs: "Inputs") -> dict[str, Stage]:
    cli = [sys.executable, "-m", "simformer_cli"]
    small_shards = [sys.executable, "-c", SMALL_SHARDS]
    return {
        "split": Stage("split", "split.zarr",
                       lambda out, resume: [*cli, "split", "--dataset", "folder", "--root", str(inputs.dataset),
                                            "--out", str(out), "--workers", "2"],
                       open_split, split_contents,
                       _steps("ingesting train images", inputs.train_images)
                       + _steps("ingesting val images", inputs.val_images)),
        "train": Stage("train", "model.zarr",
                       lambda out, resume: [*cli, "train", "--split", str(inputs.split), "--out", str(out),
                                            *TRAIN_OPTIONS, *(["--resume"] if resume else [])],
                       open_model, model_contents, _steps("training", TRAIN_STEPS), train=True),
        "infer": Stage("infer", "pred.zarr",
                       lambda out, resume: [*small_shards, "infer", "--model", str(inputs.model), "--split",
                                            str(inputs.split), "--out", str(out), "--device", "cpu"],
                       open_predictions, predictions_contents, _steps("predicting", inputs.val_images)),
        "pseudolabel": Stage("pseudolabel", "pseudo.zarr",
                             lambda out, resume: [*small_shards, "pseudolabel", "--model", str(inputs.model),
                                                  "--split", str(inputs.split), "--out", str(out), "--device", "cpu"],
                             open_pseudolabels, pseudolabels_contents,
                             _steps("predicting", inputs.train_images)
                             + _steps("measuring pseudo-label quality", inputs.train_images)),
    }


# ---------------------------------------------------------------- running and interrupting


@dataclass
class Inputs:
    dataset: Path
    train_images: int = 0
    val_images: int = 0
    split: Path = Path()
    model: Path = Path()


@dataclass
class Trial:
    stage: str
    signals: list[str]
    points: list[str] = field(default_factory=list)  # where each signal was sent (the hold it followed)
    delivered: int = 0  # signals that reached a still running stage
    states: list[str] = field(default_factory=list)  # after each signal: "none" or "complete"
    completed: bool = False
    identical: bool = False
    problems: list[str] = field(default_factory=list)


def _reader_verdict(stage: Stage, out: Path, reference: dict[str, Any]) -> str:
    """'none' (refused by the readers: no artifact), 'complete' (accepted and equal), else a problem."""
    from simformer_cli.errors import ArtifactError

    try:
        stage.reader(out)
    except ArtifactError as exc:
        if out.exists():  # refused, but the atomic rename should never leave anything there
            return f"PROBLEM: {out} exists and the readers refuse it ({exc})"
        return "none"
    wrong = differences(stage.contents(out), reference)
    return "complete" if not wrong else f"PROBLEM: accepted but differs from the uninterrupted run in {wrong[:5]}"


def run_to_end(command: list[str], timeout: float = 600) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``command`` to its end (no hold); the result and its wall time in seconds."""
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=stage_env(), timeout=timeout)
    return done, time.perf_counter() - began


def _group_members(pgid: int) -> list[int]:
    """The processes of a process group (from /proc), the leader excluded."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != pgid:
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[2]) == pgid and fields[0] != "Z":  # (state, ppid, pgrp, ...); zombies are dead
                members.append(int(entry))
    return members


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until every process has ended (an event: its pidfd becomes readable); those still alive
    after ``timeout`` seconds, a safety net only (a worker that outlives its stage is a problem)."""
    left = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            if not select.select([fd], [], [], timeout)[0]:
                left.append(pid)
        finally:
            os.close(fd)
    return left


def start_held(command: list[str], points: list[str]) -> tuple[subprocess.Popen, str | None, str]:
    """Start ``command`` told to hold at ``points`` (and before it exits); wait until it holds.

    Returns the process, the point it holds at, read from its stderr (None: it ended first, which
    only happens when it fails), and what it wrote on stderr before. Its stdout is discarded, its
    stderr stays a pipe.
    """
    env = dict(stage_env(), **{HOLD_ENV: ";".join([*points, AT_EXIT])})
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    assert process.stderr is not None
    early = []
    for line in process.stderr:  # blocks until the stage writes a line: no polling, no deadline
        if line.startswith("hold: "):
            return process, line.removeprefix("hold: ").strip(), "".join(early)
        early.append(line)
    process.wait()
    return process, None, "".join(early)


def send(process: subprocess.Popen, sig: signal.Signals) -> None:
    if sig == signal.SIGINT:
        os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole group
    else:
        process.send_signal(sig)  # the stage's own process only: its workers must follow


def interrupt(command: list[str], out: Path, *, sig: signal.Signals, point: str, following: str | None,
              jitter: float | None, trial: Trial, stage: Stage, reference: dict[str, Any]) -> None:
    """Run ``command`` until it holds at ``point`` (or, if the run never gets there, before it
    exits), send ``sig``, check the aftermath. With ``jitter`` seconds, release the hold first and
    signal that much later; the stage holds at ``following`` (or before it exits) if it gets there first."""
    process, held, early = start_held(command, [point] + ([following] if jitter is not None and following else []))
    if held is None:
        trial.problems.append(f"the stage ended without holding: exit {process.returncode}, stderr ends {early[-300:]!r}")
        return
    if out.exists() and not (out / "manifest.json").is_file():
        trial.problems.append(f"{out} existed without a manifest while the stage ran")
    if jitter is not None and held != AT_EXIT:
        process.send_signal(signal.SIGUSR1)  # go on, and be signalled a moment later
        time.sleep(jitter)  # whenever this ends, the stage is still running (held at worst)
    trial.points.append(held)
    members = _group_members(process.pid)
    send(process, sig)
    trial.delivered += 1
    _, stderr = process.communicate()
    stderr = early + stderr
    if _wait_gone(members, timeout=120):
        trial.problems.append(f"processes of the {stage.name} stage outlived it")
        os.killpg(process.pid, signal.SIGKILL)
    verdict = _reader_verdict(stage, out, reference)
    finished = process.returncode == 0  # a signal while held before exit: the work was already done
    if sig == signal.SIGINT and not finished:
        lines = [line for line in stderr.splitlines() if line.strip()]
        if process.returncode != 130 or not lines or HINT not in lines[-1] or "Traceback" in stderr:
            trial.problems.append(f"SIGINT: exit {process.returncode}, stderr ends {stderr[-300:]!r}")
        elif stage.train and "--resume" not in lines[-1] and "--resume" not in command:
            trial.problems.append("SIGINT during train: the hint does not mention --resume")
    trial.states.append(verdict if not verdict.startswith("PROBLEM") else "problem")
    if verdict.startswith("PROBLEM"):
        trial.problems.append(verdict)
    # After Ctrl-C of split a hidden staging folder may remain: zarr's I/O thread can finish a write
    # after the cleanup. It is never taken for an artifact, and the rerun removes it under the lock
    # (run_trial checks that nothing but the artifact and its lock is left after the rerun).


def has_checkpoint(out: Path) -> bool:
    from simformer_cli.training.checkpoint import latest_checkpoint

    return latest_checkpoint(out.parent / f".{out.name}.partial" / "checkpoints") is not None


def run_trial(stage: Stage, workdir: Path, reference: dict[str, Any], step_seconds: float | None,
              rng: random.Random, signals: list[signal.Signals]) -> Trial:
    """``step_seconds``: with a number, each signal comes up to that long (times a random fraction)
    after the drawn step; None: at the step itself."""
    trial = Trial(stage.name, [s.name for s in signals])
    out = workdir / stage.out_name
    out.parent.mkdir(parents=True, exist_ok=True)
    for sig in signals:
        resume = stage.train and has_checkpoint(out)
        # A rerun counts its steps from where it continues; a step it never reaches (the work is
        # done) makes it hold before it exits instead, and the signal then finds a finished stage.
        index = rng.randrange(len(stage.points))
        following = stage.points[index + 1] if index + 1 < len(stage.points) else None
        jitter = None if step_seconds is None else rng.uniform(0, step_seconds)
        interrupt(stage.command(out, resume), out, sig=sig, point=stage.points[index], following=following,
                  jitter=jitter, trial=trial, stage=stage, reference=reference)
    resume = stage.train and has_checkpoint(out)
    done, _ = run_to_end(stage.command(out, resume))
    trial.completed = done.returncode == 0
    if not trial.completed:
        trial.problems.append(f"rerun failed with exit {done.returncode}: {done.stderr[-500:]!r}")
        return trial
    if resume and "resuming from step" not in done.stderr:
        trial.problems.append("the --resume rerun did not resume")
    wrong = differences(stage.contents(out), reference)
    trial.identical = not wrong
    if wrong:
        trial.problems.append(f"result differs from the uninterrupted run in {wrong[:5]}")
    extra = sorted(p.name for p in out.parent.iterdir() if p.name not in (out.name, f".{out.name}.lock"))
    if extra:
        trial.problems.append(f"left beside the output: {extra}")
    return trial


# ---------------------------------------------------------------- set-up


def make_inputs(base: Path, *, train_images: int = 48, val_images: int = 24, size: int = 32) -> Inputs:
    """A folder dataset (the synthetic generator writes the documented folder format)."""
    from simformer_cli.data.synthetic import generate_synthetic
    from simformer_cli.settings.synthetic import SyntheticSettings

    dataset = base / "dataset"
    generate_synthetic(dataset, SyntheticSettings(train_images=train_images, val_images=val_images,
                                                  image_size=size, seed=3), workers=0)
    return Inputs(dataset=dataset, train_images=train_images, val_images=val_images)


@dataclass
class Reference:
    contents: dict[str, Any]
    step_seconds: float  # the uninterrupted run's wall time over its number of steps


def make_references(base: Path, inputs: Inputs, names: list[str]) -> dict[str, Reference]:
    """Uninterrupted runs of every stage (also what the later stages read)."""
    references: dict[str, Reference] = {}
    stages = make_stages(inputs)
    needed = {"split", *names} | ({"train"} if {"infer", "pseudolabel"} & set(names) else set())
    for name in ("split", "train", "infer", "pseudolabel"):
        if name not in needed:
            continue
        stage = stages[name]
        out = base / "reference" / name / stage.out_name
        out.parent.mkdir(parents=True)
        done, seconds = run_to_end(stage.command(out, False))
        if done.returncode != 0:
            raise RuntimeError(f"uninterrupted {name} failed: {done.stderr[-2000:]}")
        references[name] = Reference(stage.contents(out), seconds / len(stage.points))
        if name == "split":
            inputs.split = out
        elif name == "train":
            inputs.model = out
        stages = make_stages(inputs)
    return references


def run_stage_trials(base: Path, inputs: Inputs, reference: Reference, stage_name: str, plans: list[list[str]],
                     seed: int, *, jitter: bool = False) -> list[Trial]:
    """``jitter``: signal a random fraction of a step after the drawn step (the benchmark), else at
    the step itself (the tests: the same moments on every machine)."""
    stage = make_stages(inputs)[stage_name]
    rng = random.Random(f"{seed}:{stage_name}")
    trials = []
    for number, plan in enumerate(plans):
        signals = [signal.Signals[f"SIG{name}"] for name in plan]
        trials.append(run_trial(stage, base / "trials" / stage_name / f"{number:03d}", reference.contents,
                                reference.step_seconds * 1.15 if jitter else None, rng, signals))
    return trials


def default_plans(trials: int) -> list[list[str]]:
    """Mostly one SIGKILL; every fourth trial two kills in a row; every fifth a Ctrl-C."""
    plans = []
    for number in range(trials):
        if number % 5 == 4:
            plans.append(["INT"])
        elif number % 4 == 3:
            plans.append(["KILL", "KILL"])
        else:
            plans.append(["KILL"])
    return plans
