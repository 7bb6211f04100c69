"""Devices and process groups: one code path for one CPU, one GPU, or many processes (torchrun)."""

from __future__ import annotations

import contextlib
import os
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
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    dtype = torch.bfloat16 if device.type == "cuda" and bf16 and torch.cuda.is_bf16_supported() else None
    return Runtime(device=device, rank=rank, world_size=world_size, autocast_dtype=dtype)


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
