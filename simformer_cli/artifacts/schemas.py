"""JSON Schema of every manifest kind, as checked into ``manifests/``."""

from __future__ import annotations

import json

from simformer_cli.artifacts.metrics import MetricsManifest
from simformer_cli.artifacts.model import ModelManifest
from simformer_cli.artifacts.predictions import PredictionsManifest
from simformer_cli.artifacts.pseudolabels import PseudoLabelsManifest
from simformer_cli.artifacts.split import SplitManifest

MANIFEST_MODELS = {"split": SplitManifest, "model": ModelManifest, "predictions": PredictionsManifest,
                   "pseudolabels": PseudoLabelsManifest, "metrics": MetricsManifest}


def schema_files() -> dict[str, str]:
    """File name -> JSON Schema text, one file per artifact kind."""
    return {
        f"{kind}.schema.json": json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"
        for kind, model in MANIFEST_MODELS.items()
    }
