"""Kill anywhere, the fast variant: split, train, infer and pseudolabel are killed (SIGKILL) or
interrupted (Ctrl-C) at seeded random moments while they write, and run again.

After every signal the output path holds no artifact or a complete one (checked with the readers
later stages use), no process of the stage outlives it, and the rerun gives exactly the result of an
uninterrupted run. The harness is ``kill_harness``; ``benchmarks/kill_anywhere.py`` runs it with more
moments per stage.

No test here depends on timing: a moment is a step of the stage's own progress (the
``SIMFORMER_TEST_HOLD`` hook makes the stage wait there and say so on stderr), and each signal is
sent once the stage says it waits, so it always finds the stage running at that step, however slow
or loaded the machine is.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import kill_harness as harness

STAGES = ["split", "train", "infer", "pseudolabel"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):  # noqa: ANN001, ANN201
    """A folder dataset and uninterrupted runs of the four stages (each also feeds the next)."""
    base = tmp_path_factory.mktemp("kill")
    inputs = harness.make_inputs(base)
    references = harness.make_references(base, inputs, STAGES)
    return base, inputs, references


@pytest.mark.parametrize("stage", STAGES)
def test_interrupted_stage_reruns_to_the_uninterrupted_result(prepared, stage: str) -> None:  # noqa: ANN001
    base, inputs, references = prepared
    # Three moments per stage: a kill, a kill of the rerun, and a Ctrl-C in a fresh run.
    trials = harness.run_stage_trials(base, inputs, references[stage], stage, [["KILL", "KILL"], ["INT"]], seed=1)
    problems = [problem for trial in trials for problem in trial.problems]
    assert problems == []
    assert all(trial.completed and trial.identical for trial in trials), trials
    assert [trial.delivered for trial in trials] == [2, 1], trials  # every signal found the stage running
    assert all(state in ("none", "complete") for trial in trials for state in trial.states)


def test_ctrl_c_during_training_says_resume_and_resuming_gives_the_same_weights(prepared, tmp_path: Path) -> None:  # noqa: ANN001
    base, inputs, references = prepared
    stage = harness.make_stages(inputs)["train"]
    out = tmp_path / stage.out_name
    # The run waits after its second step (whose checkpoint is written) until it is signalled.
    process, held, _ = harness.start_held(stage.command(out, False), ["training@2"])
    assert held == "training@2", process.returncode
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "--resume" in lines[-1] and "Traceback" not in err
    assert not out.exists()
    assert harness.has_checkpoint(out)
    resumed, _ = harness.run_to_end(stage.command(out, True))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step" in resumed.stderr
    assert harness.differences(stage.contents(out), references["train"].contents) == []
