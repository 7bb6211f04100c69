"""The model artifact: its manifest (resolved training settings, classes, the weights' digest) and
its one file, ``weights.safetensors``: tensors only, so loading a model never runs code from it.

Building the network the weights belong to is the domain's (``model``, ``cam``); here the weights
file is written, checked against the manifest, and loaded into a network after checking every
tensor. torch is imported by those functions alone: the manifest reads without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, ValidationInfo, field_validator

from simformer_cli.artifacts.digest import file_digest
from simformer_cli.artifacts.inventory import InputChanged, rebuilt_message, repair_hint
from simformer_cli.settings.labels import ignore_index_for
from simformer_cli.artifacts.manifest import Frozen, ManifestBase, OmitsAbsent
from simformer_cli.artifacts.store import open_artifact, read_manifest
from simformer_cli.errors import ArtifactError
from simformer_cli.settings.training import TrainSettings

if TYPE_CHECKING:
    import torch

WEIGHTS_FILE = "weights.safetensors"


class TrainParams(Frozen):
    settings: TrainSettings
    backbone_weights_sha256: str | None = None


class TrainSummary(Frozen):
    steps: int = Field(ge=0)
    resumed_from: int = Field(ge=0)
    seconds: float
    images_per_second: float
    final_losses: dict[str, float]
    device: str
    world_size: int


class ModelManifest(OmitsAbsent, ManifestBase):
    OPTIONAL_FIELDS = ("category_ids",)

    kind: Literal["model"] = "model"
    schema_version: Literal[1] = 1
    stage: Literal["train", "retrain"]
    params: TrainParams
    summary: TrainSummary
    class_names: list[str]
    base_classes: list[int]
    novel_classes: list[int]
    ignore_index: int = Field(ge=1, le=65535)
    label_sources: list[str] = Field(min_length=1, description="the labels this training read, e.g. the split's "
                                     "weak train labels and image-level labels, its full labels (oracle), pseudo labels")
    weights_file: Literal["weights.safetensors"] = WEIGHTS_FILE
    weights_sha256: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    category_ids: list[int] | None = None  # the dataset's own class ids (the split's), where not 0..K-1

    # Field validators (not one for the whole model) so that a refusal names its field; the
    # classes, the network's output and the ignore value must agree, so that a forged manifest with
    # a valid digest is refused here, not deep inside a stage.
    @field_validator("class_names")
    @classmethod
    def _classes_fit_the_network(cls, names: list[str], info: ValidationInfo) -> list[str]:
        params = info.data.get("params")
        if params is not None and params.settings.model.num_classes != len(names):
            raise ValueError(f"the network has {params.settings.model.num_classes} classes, "
                             f"class_names lists {len(names)}")
        return names

    @field_validator("novel_classes")
    @classmethod
    def _classes_partition(cls, novel: list[int], info: ValidationInfo) -> list[int]:
        names, base = info.data.get("class_names"), info.data.get("base_classes")
        if names is not None and base is not None and (
                set(base) & set(novel) or set(base) | set(novel) != set(range(len(names)))):
            raise ValueError("base_classes and novel_classes must partition 0..K-1")
        return novel

    @field_validator("ignore_index", mode="before")
    @classmethod
    def _ignore_is_an_integer(cls, ignore: object) -> object:
        if not isinstance(ignore, int) or isinstance(ignore, bool):  # 1e30 would fail in a stranger way
            raise ValueError(f"ignore_index {ignore!r} is not an integer")
        return ignore

    @field_validator("ignore_index")
    @classmethod
    def _ignore_value(cls, ignore: int, info: ValidationInfo) -> int:
        names = info.data.get("class_names")
        if names is not None and ignore != ignore_index_for(len(names)):
            raise ValueError(f"ignore_index {ignore} is not the ignore value of {len(names)} classes "
                             f"({ignore_index_for(len(names))})")
        return ignore


def file_sha256(path: Path) -> str:
    return "sha256:" + file_digest(path)


def write_weights(staging: Path, state: dict[str, torch.Tensor]) -> str:
    """Save the model state dict as safetensors in the staging folder; returns its sha256."""
    from safetensors.torch import save_file

    path = staging / WEIGHTS_FILE
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return file_sha256(path)


def tensor_problem(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str | None:
    """What is wrong with loaded tensors that ``load_state_dict`` would let through: a dtype other than
    the network's own (it would cast silently) or a value that is not finite. None when all is well;
    missing, unexpected or misshapen tensors are left to ``load_state_dict``."""
    import torch

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
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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
