"""Checkpoints without pickle: tensors in a safetensors file, everything else in JSON.

A checkpoint is a directory ``step-NNNNNNN/`` holding ``tensors.safetensors`` and ``state.json``,
written under a temporary name and renamed into place, so a crash never leaves a half checkpoint
that ``--resume`` would load. Only the newest complete checkpoint is kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from simformer_cli.artifacts.model import tensor_problem
from simformer_cli.errors import UserError

STEP_DIR = re.compile(r"^step-(\d{7})$")


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, per_param in state["state"].items():
        meta["state"][str(index)] = {}
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
                meta["state"][str(index)][name] = "tensor"
            else:
                meta["state"][str(index)][name] = value
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state = {}
    for index, per_param in meta["state"].items():
        state[int(index)] = {
            name: tensors[f"optimizer.{index}.{name}"] if value == "tensor" else value
            for name, value in per_param.items()
        }
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    folder: Path, *, step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer, extra: dict[str, Any]
) -> Path:
    """Write the checkpoint of ``step`` atomically and delete older ones."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:07d}"
    tmp = folder / f".tmp-step-{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {f"module.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    optim_tensors, optim_meta = _flatten_optimizer(optimizer.state_dict())
    tensors.update(optim_tensors)
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.torch_cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(tmp / "tensors.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": optim_meta, "extra": extra}))
    for path in (tmp / "tensors.safetensors", tmp / "state.json"):
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    os.rename(tmp, final)
    for old in folder.iterdir():
        if old != final and (STEP_DIR.match(old.name) or old.name.startswith(".tmp-step-")):
            shutil.rmtree(old, ignore_errors=True)
    return final


def drop_checkpoints(folder: Path) -> None:
    """Delete checkpoints so that a kill half-way never leaves one that looks complete.

    ``latest_checkpoint`` only sees a step folder with its ``state.json``: that file goes first, so a
    folder whose tensors are already gone is never offered to ``--resume``.
    """
    if not folder.is_dir():
        return
    for step in folder.iterdir():
        if step.is_dir():
            (step / "state.json").unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def latest_checkpoint(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    steps = sorted(p for p in folder.iterdir() if STEP_DIR.match(p.name) and (p / "state.json").is_file())
    return steps[-1] if steps else None


def load_checkpoint(
    path: Path, *, module: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[int, dict[str, Any]]:
    """Restore module, optimiser and RNG state; returns (next step, extra). The module's tensors are
    checked as a model artifact's are (its own dtypes, finite values) before they are loaded."""
    try:
        tensors = load_file(str(path / "tensors.safetensors"))
        state = json.loads((path / "state.json").read_text())
        weights = {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")}
        problem = tensor_problem(weights, module.state_dict())
        if problem is not None:
            raise UserError(f"{path}: checkpoint is damaged (it {problem}); rerun without --resume to start over")
        module.load_state_dict(weights)
        optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
        torch.set_rng_state(tensors["rng.torch_cpu"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        raise UserError(f"{path}: checkpoint is damaged ({type(exc).__name__}); rerun without --resume to start over") from None
    if "rng.torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.torch_cuda"])
    return int(state["step"]), state["extra"]
