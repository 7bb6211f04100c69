"""What every stage shares: its result, the process it runs in, and the model it may read."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from simformer_cli.artifacts.manifest import ManifestBase
from simformer_cli.artifacts.model import ModelManifest, checked_weights_file, load_weights_into
from simformer_cli.artifacts.store import current_artifact
from simformer_cli.cam.network import CamNet, build_cam_model
from simformer_cli.devices import Runtime, busy_machine_warning, start_runtime, stop_runtime
from simformer_cli.model import MaskFormer, build_model
from simformer_cli.progress import Reporter, SilentReporter
from simformer_cli.settings.choices import DeviceChoice

M = TypeVar("M", bound=ManifestBase)


@dataclass(frozen=True)
class StageResult(Generic[M]):
    """The artifact a stage made, or found up to date (``skipped``)."""

    manifest: M
    digest: str
    path: Path
    skipped: bool = False


@contextlib.contextmanager
def running_on(device: DeviceChoice, reporter: Reporter | None) -> Iterator[tuple[Runtime, Reporter]]:
    """This process's runtime (joined to torchrun's group, if any) and the reporter it reports to:
    under torchrun only rank 0 talks."""
    runtime = start_runtime(device)
    try:
        yield runtime, reporter if (reporter is not None and runtime.is_main) else SilentReporter()
    finally:
        stop_runtime(runtime)


def warn_if_busy(runtime: Runtime, reporter: Reporter) -> None:
    """Say so when this stage's CPU threads will fight other processes for the cores; called once
    the inputs are accepted and the work starts, so that a refusal stays one line."""
    message = busy_machine_warning(runtime.device) if runtime.is_main else None
    if message is not None:
        reporter.info(f"warning: {message}")


def up_to_date(out: Path, model: type[M], inputs: Any, params: Any, *, force: bool, reporter: Reporter,
               same: str, redo: str) -> StageResult[M] | None:
    """The artifact at ``out`` when it records exactly these inputs and params (and not ``force``),
    saying so; None when the stage has to make it."""
    current = current_artifact(out, model, inputs, params, force=force)
    if current is None:
        return None
    reporter.info(f"{out}: up to date ({same}), skipping; pass --force to {redo}")
    return StageResult(*current, out, True)


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[MaskFormer | CamNet, ModelManifest, str]:
    """Rebuild the network from a model artifact's manifest and load its checked weights (eval mode):
    a MaskFormer, or the CAM baseline's network for a model trained with method cam."""
    manifest, digest, weights = checked_weights_file(Path(path))
    settings = manifest.params.settings
    model = build_cam_model(settings.model, settings.cam) if settings.cam is not None else build_model(settings.model)
    load_weights_into(model, weights, artifact=Path(path), stage=manifest.stage)
    return model.to(device).eval(), manifest, digest
