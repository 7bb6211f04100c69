"""Writing trained weights into a model artifact and loading them back, without pickle."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from simformer_cli.artifacts.inventory import InputChanged, rebuilt_message
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


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[MaskFormer | CamNet, ModelManifest, str]:
    """Rebuild the network from the manifest and load its checked weights (eval mode): a MaskFormer,
    or the CAM baseline's network for a model trained with method cam."""
    manifest, digest = read_manifest(Path(path), ModelManifest)
    weights = Path(path) / manifest.weights_file
    if not weights.is_file():
        raise ArtifactError(f"{path}: {manifest.weights_file} is missing; retrain or copy the whole artifact")
    if file_sha256(weights) != manifest.weights_sha256:
        raise ArtifactError(f"{path}: {manifest.weights_file} does not match the manifest's digest; the weights were changed or damaged")
    if open_artifact(Path(path), ModelManifest)[1] != digest:  # the rest of what it stores, checked as every artifact's
        raise InputChanged(rebuilt_message(path))  # rebuilt since its manifest was read above
    settings = manifest.params.settings
    model = build_cam_model(settings.model, settings.cam) if settings.cam is not None else build_model(settings.model)
    try:
        model.load_state_dict(load_file(str(weights)))
    except (RuntimeError, ValueError, SafetensorError) as exc:
        raise ArtifactError(f"{path}: weights are unreadable or do not fit the recorded model settings ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), manifest, digest
