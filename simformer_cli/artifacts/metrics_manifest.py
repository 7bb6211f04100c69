"""Manifest of a metrics artifact: the eval report; the confusion matrix is its one array."""

from __future__ import annotations

from typing import Literal

from simformer_cli.artifacts.manifest import Frozen, ManifestBase
from simformer_cli.artifacts.split_manifest import SubsetName
from simformer_cli.evaluation.metrics import EvalReport


class EvalParams(Frozen):
    subset: SubsetName


class MetricsManifest(ManifestBase):
    kind: Literal["metrics"] = "metrics"
    schema_version: Literal[1] = 1
    params: EvalParams
    summary: EvalReport
    class_names: list[str]
    base_classes: list[int]
    novel_classes: list[int]
