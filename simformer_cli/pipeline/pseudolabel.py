"""The ``pseudolabel`` stage: model + split (train) -> pseudo labels (``inference.pseudolabel``).

A CAM model (``train --method cam``) gives the same artifact through the same rule: its scores are
the image's novel-class CAMs refined by the random walk (``cam.pseudolabel``), and ``min_score``
defaults to the model's ``cam.min_score``.
"""

from __future__ import annotations

from pathlib import Path
from simformer_cli.artifacts.manifest import ArraySpec, ArtifactRef, Inputs, Provenance
from simformer_cli.artifacts.pseudolabels import PseudoLabelParams, PseudoLabelsManifest
from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.cam.pseudolabel import CamScorer
from simformer_cli.data.images import SplitImages
from simformer_cli.devices import broadcast_object
from simformer_cli.errors import UserError
from simformer_cli.inference.groups import describe_naming, name_groups
from simformer_cli.inference.predict import MaskFormerScorer
from simformer_cli.inference.pseudolabel import PseudoLabelRule, class_quantiles, measure_quality
from simformer_cli.inference.sharded import PredictionJob, run_prediction_job
from simformer_cli.pipeline.stage import StageResult, load_model, running_on, up_to_date, warn_if_busy
from simformer_cli.progress import Reporter
from simformer_cli.settings.choices import APPEARS, GROUPS, Among, DeviceChoice, Unnamed
from simformer_cli.settings.test_time import TestTimeSettings


def check_unnamed(among: Among, unnamed: Unnamed, prefix: str = "") -> None:
    """Refuse ``--unnamed`` other than the default without ``--among groups`` (``prefix``: the
    option names' prefix, ``pseudo-`` for pipeline)."""
    if unnamed != "name" and among != "groups":
        raise UserError(f"--{prefix}unnamed {unnamed}: only --{prefix}among groups names groups; "
                        f"add --{prefix}among groups or drop --{prefix}unnamed")


def run_pseudolabel(
    *,
    model: Path,
    split: Path,
    out: Path | None = None,
    scales: tuple[float, ...] = (1.0,),
    flip: bool = False,
    min_score: float | None = None,
    among: Among = "all",
    groups: int = GROUPS,
    appears: float = APPEARS,
    unnamed: Unnamed = "name",
    device: DeviceChoice = "auto",
    force: bool = False,
    reporter: Reporter | None = None,
) -> StageResult[PseudoLabelsManifest]:
    check_unnamed(among, unnamed)
    with running_on(device, reporter) as (runtime, reporter):
        network, model_manifest, model_digest = load_model(model, runtime.device)
        split_artifact = SplitArtifact(split)
        if not model_manifest.made_from(split_artifact.digest):
            raise UserError(f"--split {split}: the model {model} was trained on another split; use that split")
        cam = model_manifest.params.settings.cam  # set for method cam, and only then
        if among == "groups" and cam is not None:
            raise UserError(f"--model {model}: --among groups names groups of the mask features of a SimFormer model; "
                            "a CAM model (--method cam) has none: use --among image")
        if model_manifest.params.settings.method == "oracle":
            raise UserError(f"--model {model}: trained on the full labels (--method oracle), novel pixels included; "
                            "pseudo labels come from a weak-shot model (train without --method oracle)")
        inputs = Inputs(artifacts={"model": ArtifactRef.of(model, model_manifest, model_digest),
                                   "split": split_artifact.ref})
        if cam is not None and min_score is None:
            min_score = cam.min_score
        test_time = TestTimeSettings.from_training(model_manifest.params.settings.augment, scales, flip)
        grouping = (dict(groups=groups, appears=appears, unnamed="ignore" if unnamed == "ignore" else None)
                    if among == "groups" else {})
        params = PseudoLabelParams(test_time=test_time, min_score=min_score, among=among, **grouping)
        out = Path(out) if out is not None else Path(split).parent / "pseudolabels.zarr"
        current = up_to_date(out, PseudoLabelsManifest, inputs, params, force=force, reporter=reporter,
                             same="same model, split and settings", redo="redo")
        if current is not None:
            return current
        warn_if_busy(runtime, reporter)
        classes = split_artifact.manifest
        scorer = (MaskFormerScorer(network, test_time, runtime) if cam is None  # type: ignore[arg-type]
                  else CamScorer(network, split_artifact, cam, test_time, runtime))  # type: ignore[arg-type]
        quantiles = naming = None
        # Every rank labels the same way: rank 0 ranks or groups, the others receive.
        if among == "quantile":
            quantiles = broadcast_object(runtime, class_quantiles(split_artifact, scorer, reporter)
                                         if runtime.is_main else None)
        if among == "groups":
            naming = broadcast_object(runtime, name_groups(split_artifact, network, test_time, runtime, reporter,
                                                           groups, appears) if runtime.is_main else None)
            describe_naming(naming, classes.class_names, reporter)
        job = PredictionJob(source=SplitImages(split_artifact, "train"), scorer=scorer,
                            num_classes=len(classes.class_names), ignore_index=classes.ignore_index,
                            label_rule=PseudoLabelRule(split_artifact, min_score, among, quantiles, naming, unnamed))

        def make_manifest(staging: Path, arrays: dict[str, ArraySpec], seconds: float) -> PseudoLabelsManifest:
            return PseudoLabelsManifest(
                inputs=inputs, params=params, arrays=arrays, summary=measure_quality(staging, split_artifact, seconds, reporter),
                provenance=Provenance.of_this_run(threads=runtime.threads),
                class_names=classes.class_names, base_classes=classes.base_classes,
                novel_classes=classes.novel_classes, ignore_index=classes.ignore_index,
                label_dtype=job.label_dtype,  # type: ignore[arg-type]
            )

        manifest, digest = run_prediction_job(job, out=out, inputs=inputs, params=params, runtime=runtime,
                                              reporter=reporter, make_manifest=make_manifest,
                                              manifest_model=PseudoLabelsManifest)
        return StageResult(manifest, digest, out)
