"""Devices and process groups: one code path for one CPU, one GPU, or many processes (torchrun)."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from simformer_cli.errors import UserError
from simformer_cli.settings.choices import DeviceChoice


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int
    world_size: int
    autocast_dtype: torch.dtype | None
    threads: int = 1  # torch's CPU threads in this process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def resolve_device(choice: DeviceChoice) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu (or auto)")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def start_runtime(choice: DeviceChoice, *, bf16: bool = True) -> Runtime:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(choice)
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        visible = torch.cuda.device_count()
        if local_rank >= visible:
            raise UserError(f"torchrun started more processes on this machine than it has GPUs (this one is local rank "
                            f"{local_rank}, PyTorch sees {visible} GPU(s)); launch with --nproc_per_node {visible} "
                            "or fewer")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    dtype = torch.bfloat16 if device.type == "cuda" and bf16 and torch.cuda.is_bf16_supported() else None
    return Runtime(device=device, rank=rank, world_size=world_size, autocast_dtype=dtype,
                   threads=torch.get_num_threads())


def stop_runtime(runtime: Runtime) -> None:
    if runtime.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def sum_over_processes(runtime: Runtime, value: float) -> float:
    """The sum of ``value`` over all processes (the value itself with one process)."""
    if runtime.world_size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=runtime.device)
    dist.all_reduce(total)
    return float(total.item())


def broadcast_object(runtime: Runtime, value: object) -> object:
    """Rank 0's value on every rank (e.g. a path or an error message)."""
    if runtime.world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine since boot, of this process), None without /proc/stat."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + waiting for I/O
    mine = os.times()
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), mine.user + mine.system


def busy_cores(window: float = 0.2) -> float | None:
    """About how many cores other processes keep busy right now: the machine's busy CPU time less
    this process's own (its idle-spinning threads included) over a short window; where /proc/stat
    is missing, the one-minute load average (which lags). None where neither is known."""
    before, began = _cpu_seconds(), time.monotonic()
    if before is None:
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    time.sleep(window)
    after = _cpu_seconds()
    if after is None:
        return None
    elapsed = time.monotonic() - began
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / elapsed)


def oversubscription(threads: int, cores: int, busy: float | None) -> str | None:
    """The warning to give when ``threads`` more busy threads would not fit on ``cores``: processes
    that each use every core slow one another down many times over, not just by their share."""
    if busy is None or busy + threads <= cores + 0.5:
        return None
    share = max(1, cores - round(busy))
    if threads <= share:  # already as small as it can be: the advice would be to do what it does
        return (f"this machine is busy (other processes keep about {busy:.1f} of its {cores} cores working): "
                f"this process's {threads} torch thread(s) will share the cores with them, so its steps will be "
                "slower than on a quiet machine")
    return (f"this machine is busy (other processes keep about {busy:.1f} of its {cores} cores working) and "
            f"{threads} torch thread(s) more will compete with them, which can make each step many times "
            f"slower; give each process its share of the cores: --threads {share} (or OMP_NUM_THREADS={share})")


def use_threads(requested: int | None) -> int:
    """Give this process ``requested`` torch threads; by default keep PyTorch's own choice
    (OMP_NUM_THREADS, else the machine's cores), at most the cores this process may use. Returns
    the count. Never chosen from the machine's load: the count changes float sums and so the
    weights, and a run must not depend on what else happened to be running."""
    threads = requested or min(torch.get_num_threads(), usable_cores())
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


def busy_machine_warning(device: torch.device) -> str | None:
    """What to say when this process's CPU threads will compete with other processes for the cores
    (None on a GPU, when they fit, or when ``SIMFORMER_BUSY_WARNING=0`` asks for quiet)."""
    if device.type != "cpu" or os.environ.get("SIMFORMER_BUSY_WARNING", "1") == "0":
        return None
    return oversubscription(torch.get_num_threads(), usable_cores(), busy_cores())
