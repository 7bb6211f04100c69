"""The whole chain: `simformer pipeline` killed mid-training and rerun, and stages/quickstart.sh."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--synthetic-train", "24", "--synthetic-val", "8", "--synthetic-size", "64",
         "--iters", "6", "--batch-size", "4", "--checkpoint-every", "2", "--device", "cpu", "--json"]


def pipeline(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "simformer_cli", "pipeline", "--workdir", str(workdir), *SMALL]


def test_killed_pipeline_resumes_to_the_same_table(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    straight = subprocess.run(pipeline(tmp_path / "straight"), capture_output=True, text=True, env=env, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    workdir = tmp_path / "killed"
    # The test hook makes training wait after its second step (checkpoint written) and say so on
    # stderr: the kill lands there, whatever the machine's speed or load.
    process = subprocess.Popen(pipeline(workdir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=dict(env, SIMFORMER_TEST_HOLD="training@2"))
    assert process.stderr is not None
    assert any(line.startswith("hold: training@2") for line in process.stderr), process.wait()
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert not (workdir / "model.zarr").exists()
    resumed = subprocess.run(pipeline(workdir), capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step" in resumed.stderr
    tables = [json.loads(run.stdout) for run in (resumed, straight)]
    for table in tables:
        table.pop("seconds")  # wall times differ; every figure must not
    assert tables[0] == tables[1]
    # Retraining started from the one-stage model (the pipeline's default --retrain-from).
    retrained = json.loads((workdir / "model-retrained.zarr" / "manifest.json").read_text())
    assert Path(retrained["manifest"]["inputs"]["artifacts"]["init"]["path"]) == (workdir / "model.zarr").absolute()


def test_pipeline_can_retrain_from_scratch(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    small = [*SMALL[:SMALL.index("--iters")], "--iters", "2", *SMALL[SMALL.index("--iters") + 2:]]
    command = [sys.executable, "-m", "simformer_cli", "pipeline", "--workdir", str(tmp_path), *small,
               "--retrain-from", "scratch"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    retrained = json.loads((tmp_path / "model-retrained.zarr" / "manifest.json").read_text())
    assert "init" not in retrained["manifest"]["inputs"]["artifacts"]
    wrong = subprocess.run([*command[:-1], "sideways"], capture_output=True, text=True, env=env, timeout=600)
    assert wrong.returncode == 2 and "--retrain-from" in wrong.stderr


def test_pipeline_runs_rounds_of_pseudo_labels_with_training_settings(tmp_path: Path) -> None:
    """``--rounds 2``: round 2 labels with round 1's retrained model and retrains from it; ``--set``
    reaches train and both retrainings, ``--train-set`` train alone; the final table is the last
    round's model."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    small = [*SMALL[:SMALL.index("--iters")], "--iters", "2", *SMALL[SMALL.index("--iters") + 2:]]
    command = [sys.executable, "-m", "simformer_cli", "pipeline", "--workdir", str(tmp_path), *small,
               "--rounds", "2", "--set", "optim.weight_decay=0.001", "--train-set", "loss.elimination=true",
               "--pseudo-among", "groups", "--pseudo-unnamed", "ignore"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = json.loads(done.stdout)
    assert list(table["seconds"]) == [
        "split", "train (SimFormer, weak labels)", "infer + eval model", "pseudolabel",
        "retrain (base ground truth + novel pseudo labels)", "pseudolabel (round 2)",
        "retrain (base ground truth + novel pseudo labels) (round 2)", "infer + eval model-retrained-round2"]

    def manifest(name: str) -> dict:
        return json.loads((tmp_path / name / "manifest.json").read_text())["manifest"]

    def source(name: str, role: str) -> Path:
        return Path(manifest(name)["inputs"]["artifacts"][role]["path"])

    assert source("pseudolabels-round2.zarr", "model") == (tmp_path / "model-retrained.zarr").absolute()
    assert source("model-retrained-round2.zarr", "init") == (tmp_path / "model-retrained.zarr").absolute()
    assert source("model-retrained-round2.zarr", "pseudolabels") == (tmp_path / "pseudolabels-round2.zarr").absolute()
    for name in ("model.zarr", "model-retrained.zarr", "model-retrained-round2.zarr"):
        settings = manifest(name)["params"]["settings"]
        assert settings["optim"]["weight_decay"] == 0.001, name
        assert settings["loss"].get("elimination", False) is (name == "model.zarr"), name  # off: left out
    for name in ("pseudolabels.zarr", "pseudolabels-round2.zarr"):
        params = manifest(name)["params"]
        assert (params["among"], params["unnamed"]) == ("groups", "ignore"), name
    refused = subprocess.run([*command[:command.index("--pseudo-among")], "--pseudo-unnamed", "ignore"],
                             capture_output=True, text=True, env=env, timeout=600)
    assert refused.returncode != 0 and "--pseudo-among groups" in refused.stderr and "Traceback" not in refused.stderr


def test_quickstart_recipe_runs_on_a_tiny_setting(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", DEVICE="cpu",
               TRAIN_OPTS="--iters 1 --batch-size 2",
               SPLIT_OPTS="--synthetic-train 8 --synthetic-val 4 --synthetic-size 32",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    done = subprocess.run(["bash", str(REPO / "stages" / "quickstart.sh"), str(tmp_path / "q")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("split", "model", "pred", "metrics", "pseudo", "model-rt", "pred-rt", "metrics-rt"):
        assert (tmp_path / "q" / f"{name}.zarr" / "manifest.json").is_file(), name
    again = subprocess.run(["bash", str(REPO / "stages" / "quickstart.sh"), str(tmp_path / "q")],
                           capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and again.stderr.count("up to date") >= 5
