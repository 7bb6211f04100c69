"""Writing trained weights into a model artifact and loading them back, without pickle."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from simformer_cli.artifacts.inventory import InputChanged, rebuilt_message, repair_hint
from simformer_cli.artifacts.model_manifest import WEIGHTS_FILE, ModelManifest
from simformer_cli.artifacts.store import open_artifact, read_manifest
from simformer_cli.cam.network import CamNet, build_cam_model
from simformer_cli.errors import ArtifactError
from simformer_cli.model import MaskFormer, build_model


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def write_weights(staging: Path, state: dict[str, torch.Tensor]) -> str:
    """Save the model state dict as safetensors in the staging folder; returns its sha256."""
    path = staging / WEIGHTS_FILE
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return file_sha256(path)


def tensor_problem(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str | None:
    """What is wrong with loaded tensors that ``load_state_dict`` would let through: a dtype other than
    the network's own (it would cast silently) or a value that is not finite. None when all is well;
    missing, unexpected or misshapen tensors are left to ``load_state_dict``."""
    for name, tensor in tensors.items():
        own = expected.get(name)
        if own is None:
            continue
        if tensor.dtype != own.dtype:
            return (f"stores tensor {name!r} as {str(tensor.dtype).removeprefix('torch.')}, "
                    f"the network needs {str(own.dtype).removeprefix('torch.')}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"holds NaN or infinite values (tensor {name!r})"
    return None


def checked_weights_file(path: Path) -> tuple[ModelManifest, str, Path]:
    """Check a model artifact's weights file against the manifest's sha256, then the rest of what it
    stores as every artifact's is (``open_artifact``). -> (manifest, digest, weights file)."""
    path = Path(path)
    manifest, digest = read_manifest(path, ModelManifest)
    weights = path / manifest.weights_file
    if not weights.is_file():
        raise ArtifactError(f"{path}: {manifest.weights_file} is missing; retrain or copy the whole artifact")
    if file_sha256(weights) != manifest.weights_sha256:
        raise ArtifactError(f"{path}: {manifest.weights_file} does not match the manifest's digest; the weights were changed or damaged")
    if open_artifact(path, ModelManifest)[1] != digest:  # rebuilt since its manifest was read above
        raise InputChanged(rebuilt_message(path))
    return manifest, digest, weights


def load_weights_into(network: torch.nn.Module, weights: Path, *, artifact: Path, stage: str = "train") -> None:
    """Load a model artifact's weights file into ``network`` after checking every tensor's dtype
    against the network's and that every value is finite (a forged file whose sha256 was recorded
    anew passes the digest check, and would otherwise predict class 0 everywhere)."""
    try:
        state = load_file(str(weights))
    except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
        raise ArtifactError(f"{artifact}: weights are unreadable or do not fit the recorded model settings ({str(exc).splitlines()[0]})") from None
    problem = tensor_problem(state, network.state_dict())
    if problem is not None:
        raise ArtifactError(f"{artifact}: {weights.name} {problem}; {repair_hint('model', stage)}")
    try:
        network.load_state_dict(state)
    except (RuntimeError, ValueError) as exc:
        raise ArtifactError(f"{artifact}: weights are unreadable or do not fit the recorded model settings ({str(exc).splitlines()[0]})") from None


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[MaskFormer | CamNet, ModelManifest, str]:
    """Rebuild the network from the manifest and load its checked weights (eval mode): a MaskFormer,
    or the CAM baseline's network for a model trained with method cam."""
    manifest, digest, weights = checked_weights_file(Path(path))
    settings = manifest.params.settings
    model = build_cam_model(settings.model, settings.cam) if settings.cam is not None else build_model(settings.model)
    load_weights_into(model, weights, artifact=Path(path), stage=manifest.stage)
    return model.to(device).eval(), manifest, digest
