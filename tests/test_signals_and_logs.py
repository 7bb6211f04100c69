"""SIGTERM, the line printed after an interrupt, progress lines in logs, and ``--debug`` anywhere.

Signals go to real subprocesses at known points: the ``SIMFORMER_TEST_HOLD`` hook makes a stage
wait at a named step and say so on stderr, and the test signals it only then, so nothing here
depends on the machine's speed or load. Progress lines are tested with a fake clock.
"""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import pytest
from rich.console import Console

from simformer_cli.cli.app import _interrupted_hint
from simformer_cli.cli.console import RichReporter
from simformer_cli.progress import LogLines, duration

import kill_harness as harness


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):  # noqa: ANN001, ANN201
    """The kill-anywhere inputs and uninterrupted split, train and infer runs."""
    base = tmp_path_factory.mktemp("signals")
    inputs = harness.make_inputs(base)
    references = harness.make_references(base, inputs, ["split", "train", "infer"])
    return inputs, references


def _last_line(err: str) -> str:
    return [line for line in err.splitlines() if line.strip()][-1]


# ---------------------------------------------------------------- SIGTERM


def test_sigterm_during_training_exits_143_says_resume_and_resuming_gives_the_same_weights(
        prepared, tmp_path: Path) -> None:  # noqa: ANN001
    inputs, references = prepared
    stage = harness.make_stages(inputs)["train"]
    out = tmp_path / stage.out_name
    process, held, _ = harness.start_held(stage.command(out, False), ["training@3"])
    assert held == "training@3", process.returncode
    process.send_signal(signal.SIGTERM)  # as docker stop and schedulers do: the main process only
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err
    assert _last_line(err) == ("interrupted; run the same command again with --resume to continue from the last "
                               "checkpoint (without it, training starts over)")
    assert "Traceback" not in err
    assert not out.exists() and harness.has_checkpoint(out)
    resumed, _ = harness.run_to_end(stage.command(out, True))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step 3" in resumed.stderr
    assert harness.differences(stage.contents(out), references["train"].contents) == []


def test_sigterm_to_the_process_group_of_split_stops_it_and_a_rerun_starts_over(prepared, tmp_path: Path) -> None:  # noqa: ANN001
    inputs, references = prepared
    stage = harness.make_stages(inputs)["split"]
    out = tmp_path / stage.out_name
    # The first shard of training images is written; the parent waits, its 2 workers are alive.
    process, held, _ = harness.start_held(stage.command(out, False), ["ingesting train images@1"])
    assert held == "ingesting train images@1", process.returncode
    workers = harness._group_members(process.pid)
    assert workers, "split runs with 2 worker processes"
    os.killpg(process.pid, signal.SIGTERM)  # as systemd does: every process of the group
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err
    assert _last_line(err) == ("interrupted; run the same command again to start over (split does not resume; "
                               "nothing half-written is kept as its output)")
    assert "Traceback" not in err and "warning" not in err.lower()
    assert harness._wait_gone(workers, timeout=120) == []
    assert not out.exists()
    again, _ = harness.run_to_end(stage.command(out, False))
    assert again.returncode == 0, again.stderr
    assert harness.differences(stage.contents(out), references["split"].contents) == []


def test_sigterm_during_infer_keeps_finished_shards_and_the_rerun_continues(prepared, tmp_path: Path) -> None:  # noqa: ANN001
    inputs, references = prepared
    stage = harness.make_stages(inputs)["infer"]  # one image per shard
    out = tmp_path / stage.out_name
    process, held, _ = harness.start_held(stage.command(out, False), ["predicting@5"])
    assert held == "predicting@5", process.returncode
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err
    assert _last_line(err) == ("interrupted; run the same command again to continue from the last finished shard "
                               "(predicted images are kept)")
    again, _ = harness.run_to_end(stage.command(out, False))
    assert again.returncode == 0, again.stderr
    assert "continuing: 4 images were already done" in again.stderr  # image 5 was predicted, not yet written
    assert harness.differences(stage.contents(out), references["infer"].contents) == []


def test_a_signal_after_the_work_undoes_nothing(prepared, tmp_path: Path) -> None:  # noqa: ANN001
    inputs, references = prepared
    stage = harness.make_stages(inputs)["train"]
    out = tmp_path / stage.out_name
    process, held, _ = harness.start_held(stage.command(out, False), [])
    assert held == harness.AT_EXIT, process.returncode
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0 and "interrupted" not in err, err
    assert harness.differences(stage.contents(out), references["train"].contents) == []


# ---------------------------------------------------------------- what the line after an interrupt says


@pytest.mark.parametrize(("args", "says"), [
    (["split", "--dataset", "folder"], "to start over (split does not resume"),
    (["train", "--split", "s.zarr"], "again with --resume to continue from the last checkpoint"),
    (["retrain", "--split", "s.zarr", "--pseudolabels", "p.zarr"], "again with --resume to continue"),
    (["train", "--split", "s.zarr", "--resume"], "again to continue from the last checkpoint"),
    (["infer", "--model", "m.zarr"], "again to continue from the last finished shard"),
    (["pseudolabel", "--model", "m.zarr"], "again to continue from the last finished shard"),
    (["pipeline", "--workdir", "w"], "again to continue: finished stages are skipped"),
    (["eval", "--predictions", "p.zarr"], "to start over (eval does not resume"),
    (["viz", "--predictions", "p.zarr"], "to start over (viz does not resume"),
    (["export", "--predictions", "p.zarr"], "to start over (export does not resume"),
    (["--debug", "split"], "to start over (split does not resume"),
])
def test_the_interrupt_line_says_what_a_rerun_of_each_command_does(args: list[str], says: str) -> None:
    assert says in _interrupted_hint(args)
    assert _interrupted_hint(args).startswith("interrupted; run the same command again")


# ---------------------------------------------------------------- progress lines in logs


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_log_lines_come_soon_then_every_30_s_and_10_percent_whichever_is_rarer() -> None:
    clock, written = FakeClock(), []
    lines = LogLines("train", "training", 1000, written.append, clock=clock)
    for step in range(1, 1001):  # 0.1 s per step: 10% of the work takes 10 s, so 30 s is the rarer
        clock.now = step / 10
        lines.advance(1)
    assert written[0] == "train: training 100/1000 (10%), 10 s elapsed, ~90 s left"  # first line soon
    # then 30 s apart (300 steps), each one at least 10% after the previous one; none at the end
    assert [line.split(",")[0] for line in written] == [
        "train: training 100/1000 (10%)", "train: training 400/1000 (40%)", "train: training 700/1000 (70%)"]


def test_log_lines_of_slow_steps_follow_the_share_not_the_clock() -> None:
    clock, written = FakeClock(), []
    lines = LogLines("retrain", "training", 40, written.append, clock=clock)
    for step in range(40):  # 60 s per step: every step passes 30 s, but only every 4th passes 10%
        clock.now += 60
        lines.advance(1, note=f"loss {1 / (step + 1):.3f}")
    assert written[0] == "retrain: training 1/40 (2%), 60 s elapsed, ~39 min 0 s left, loss 1.000"
    assert [int(line.split()[2].split("/")[0]) for line in written] == [1, 5, 9, 13, 17, 21, 25, 29, 33, 37]


def test_quick_tasks_write_no_log_line() -> None:
    clock, written = FakeClock(), []
    lines = LogLines("infer", "predicting", 300, written.append, clock=clock)
    for _ in range(300):
        clock.now += 0.03  # 9 s in all
        lines.advance(1)
    assert written == []


def test_durations_read_well() -> None:
    assert [duration(s) for s in (0.4, 41, 89.6, 119, 120, 3599, 3600, 12_345)] == [
        "0 s", "41 s", "90 s", "119 s", "2 min 0 s", "59 min 59 s", "1 h 0 min", "3 h 25 min"]


def test_the_reporter_writes_plain_lines_to_a_log_and_none_to_a_terminal() -> None:
    def run(terminal: bool) -> str:
        stream, clock = io.StringIO(), FakeClock()
        console = Console(file=stream, force_terminal=terminal, width=120, highlight=False, soft_wrap=True)
        reporter = RichReporter("split", console=console, clock=clock)
        with reporter.task("ingesting train images", 50) as advance:
            for _ in range(50):
                clock.now += 1.0
                advance(1)
        return stream.getvalue()

    log = run(terminal=False)
    assert log.splitlines() == ["split: ingesting train images 10/50 (20%), 10 s elapsed, ~40 s left",
                                "split: ingesting train images 40/50 (80%), 40 s elapsed, ~10 s left"]
    assert "split: ingesting" not in run(terminal=True)  # a terminal gets the bar instead


# ---------------------------------------------------------------- --debug anywhere


@pytest.mark.parametrize("where", ["before", "after", "middle"])
def test_debug_is_accepted_anywhere_on_the_line(cli, monkeypatch, tmp_path: Path, where: str) -> None:  # noqa: ANN001
    import simformer_cli.pipeline.train as train_module

    def broken(**kwargs):  # noqa: ANN003, ANN202
        raise RuntimeError("a bug")

    monkeypatch.setattr(train_module, "run_train", broken)
    monkeypatch.delenv("SIMFORMER_DEBUG", raising=False)
    args = ["train", "--split", str(tmp_path / "s.zarr"), "--iters", "1"]
    args = {"before": ["--debug", *args], "after": [*args, "--debug"], "middle": [*args[:3], "--debug", *args[3:]]}[where]
    result = cli(*args)
    assert result.code == 1, result.err
    assert "Traceback" in result.err and "RuntimeError: a bug" in result.err
    assert result.err.splitlines()[-1].startswith("internal error: RuntimeError: a bug")
    assert os.environ.get("SIMFORMER_DEBUG") is None  # nothing leaks into later commands of the process
    without = cli(*[arg for arg in args if arg != "--debug"])
    assert without.code == 1 and "Traceback" not in without.err
