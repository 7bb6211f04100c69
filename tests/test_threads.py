"""CPU threads on a shared machine: ``--threads``, the default, the busy-machine warning, and the
count recorded where the work was done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from simformer_cli import devices
from simformer_cli.devices import busy_machine_warning, oversubscription, use_threads


@pytest.fixture(autouse=True)
def keep_threads():
    """Every test here leaves torch's thread count as it found it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("threads", "cores", "busy", "warned"), [
    (2, 2, 0.0, False),   # alone on the machine
    (1, 2, 1.0, False),   # two processes, one thread each: they fit
    (2, 2, 0.4, False),   # a little background work
    (2, 2, 2.0, True),    # another process already uses both cores
    (1, 2, 2.0, True),    # even one thread more does not fit
    (8, 16, 7.0, False),
    (16, 16, 7.0, True),
    (2, 2, None, False),  # the load is unknown: say nothing
])
def test_oversubscription_is_judged_from_threads_cores_and_load(threads, cores, busy, warned) -> None:  # noqa: ANN001
    message = oversubscription(threads, cores, busy)
    assert (message is not None) == warned
    if warned:
        share = max(1, cores - round(busy))
        if threads > share:
            assert f"--threads {share}" in message and f"OMP_NUM_THREADS={share}" in message
        else:  # nothing smaller to advise
            assert "--threads" not in message and "slower than on a quiet machine" in message


def test_the_warning_is_for_cpu_work_and_can_be_silenced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMFORMER_BUSY_WARNING", "1")
    torch.set_num_threads(2)
    monkeypatch.setattr(devices, "busy_cores", lambda: 64.0)
    assert busy_machine_warning(torch.device("cpu")) is not None
    assert busy_machine_warning(torch.device("cuda")) is None
    monkeypatch.setenv("SIMFORMER_BUSY_WARNING", "0")
    assert busy_machine_warning(torch.device("cpu")) is None
    monkeypatch.setenv("SIMFORMER_BUSY_WARNING", "1")
    monkeypatch.setattr(devices, "busy_cores", lambda: 0.0)
    assert busy_machine_warning(torch.device("cpu")) is None


def test_busy_cores_reads_a_number_of_cores() -> None:
    busy = devices.busy_cores(window=0.05)
    assert busy is None or 0.0 <= busy <= 4 * devices.usable_cores() + 1


def test_use_threads_sets_the_count_and_the_default_never_exceeds_the_usable_cores() -> None:
    assert use_threads(1) == 1 == torch.get_num_threads()
    torch.set_num_threads(devices.usable_cores() + 3)
    assert use_threads(None) == devices.usable_cores() == torch.get_num_threads()


def test_threads_option_is_used_and_recorded(cli, synthetic_split, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("SIMFORMER_BUSY_WARNING", "0")
    out = tmp_path / "m.zarr"
    result = cli("train", "--split", synthetic_split, "--out", out, "--iters", "1", "--batch-size", "2",
                 "--device", "cpu", "--threads", "1", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["provenance"]["threads"] == 1
    predictions = tmp_path / "p.zarr"
    result = cli("infer", "--model", out, "--split", synthetic_split, "--out", predictions, "--device", "cpu",
                 "--threads", "1", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["provenance"]["threads"] == 1


def test_a_busy_machine_is_named_once_the_work_starts(cli, synthetic_split, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("SIMFORMER_BUSY_WARNING", "1")
    monkeypatch.setattr(devices, "busy_cores", lambda: 64.0)
    result = cli("train", "--split", synthetic_split, "--out", tmp_path / "m.zarr", "--iters", "1",
                 "--batch-size", "2", "--device", "cpu", "--threads", "2")
    assert result.code == 0, result.err
    assert "warning: this machine is busy" in result.err and "--threads" in result.err
    # a refusal stays one line: no warning before the inputs are accepted
    result = cli("train", "--split", tmp_path / "missing.zarr", "--out", tmp_path / "n.zarr", "--device", "cpu")
    assert result.code == 2 and "warning" not in result.err and len(result.err.splitlines()) == 1


def test_more_torchrun_processes_than_gpus_is_one_clear_error(monkeypatch) -> None:
    """Two processes on a one-GPU machine: a user error naming the fix, before any CUDA call."""
    from simformer_cli.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(UserError, match="--nproc_per_node 1 or fewer"):
        devices.start_runtime("cuda")
