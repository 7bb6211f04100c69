"""``simformer pipeline``: the whole chain, split to retrained model, in one folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from simformer_cli.cli import options
from simformer_cli.cli.console import RichReporter, print_json
from simformer_cli.cli.options import (
    AnnotationsOption, DeviceOption, ImagesOption, JsonOption, RootOption, SetOption, TagsOption, ValAnnotationsOption,
    choice, examples,
)
from simformer_cli.data.datasets import DATASETS
from simformer_cli.settings.choices import Among, RetrainStart, Unnamed
from simformer_cli.settings.training import PresetName

PIPELINE_EXAMPLES = examples(
    "simformer pipeline --workdir runs/syn",
    "simformer pipeline --workdir runs/quick --synthetic-train 200 --synthetic-val 50 --iters 200 --json",
    "simformer pipeline --workdir runs/ade --dataset ade20k --root datasets --official-split 1 --preset paper",
    "simformer pipeline --workdir runs/camvid --dataset folder --root ../shared/data/camvid "
    "--novel-classes tree,car,pedestrian --train-set loss.elimination=true --pseudo-among quantile --rounds 3",
)


def pipeline(
    workdir: Annotated[Path, typer.Option(help="Folder for every artifact of the chain.")] = Path("runs/syn"),
    dataset: Annotated[str, choice("--dataset", tuple(DATASETS), help="The dataset to read (synthetic: generated).")] = "synthetic",
    root: RootOption = None,
    ratio: Annotated[Optional[str], typer.Option(help="BASE:NOVEL class ratio (default 3:1).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the ratio split.")] = None,
    official_split: Annotated[Optional[int], typer.Option(help="A published split: ADE20K 1-4, COCO-Stuff-10K 1-9.")] = None,
    novel_classes: Annotated[Optional[str], typer.Option(help="Comma-separated novel class names or ids.")] = None,
    tags: TagsOption = None,
    images: ImagesOption = None,
    annotations: AnnotationsOption = None,
    val_annotations: ValAnnotationsOption = None,
    synthetic_train: Annotated[Optional[int], typer.Option(help="Synthetic data: training images.")] = None,
    synthetic_val: Annotated[Optional[int], typer.Option(help="Synthetic data: validation images.")] = None,
    synthetic_size: Annotated[Optional[int], typer.Option(help="Synthetic data: image side in pixels.")] = None,
    preset: Annotated[PresetName, choice("--preset", PresetName, help="tiny: CPU minutes; paper: ResNet-50, GPUs.")] = "tiny",
    iters: Annotated[Optional[int], typer.Option(help="Training steps of train (and retrain, unless --retrain-iters).")] = None,
    retrain_iters: Annotated[Optional[int], typer.Option(help="Training steps of retrain.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Global batch: images per step.")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N training steps.")] = 50,
    pseudo_scales: Annotated[str, typer.Option(help="Test-time scales of pseudo-labelling.")] = "1",
    pseudo_flip: Annotated[bool, typer.Option("--pseudo-flip", help="Flip views when pseudo-labelling.")] = False,
    pseudo_among: Annotated[Among, choice("--pseudo-among", Among, help="pseudolabel --among: all (the paper), image, quantile or groups.")] = "all",
    pseudo_unnamed: Annotated[Unnamed, choice("--pseudo-unnamed", Unnamed, help="pseudolabel --unnamed (with "
                                                                               "--pseudo-among groups): name or ignore.")] = "name",
    retrain_from: Annotated[RetrainStart, choice(
        "--retrain-from", RetrainStart, help="Retraining starts from the one-stage model's weights (retrain --init-from), "
                                             "or from the preset's initialisation (scratch, as the paper).")] = "one-stage",
    rounds: Annotated[int, typer.Option(
        help="Rounds of pseudolabel + retrain; each round labels with the previous round's model.")] = 1,
    set_: SetOption = None,
    train_set: Annotated[Optional[list[str]], typer.Option(
        "--train-set", help="Like --set, for train alone (the one-stage model), e.g. a naming term: "
                            "--train-set loss.elimination=true.")] = None,
    device: DeviceOption = "auto",
    threads: options.ThreadsOption = None,
    json_out: JsonOption = False,
) -> None:
    """Run the whole chain into one folder; rerunning skips finished stages and resumes interrupted ones."""
    from simformer_cli.cli.report import print_pipeline_table
    from simformer_cli.pipeline.chain import run_pipeline
    options.use_threads(threads)

    seed = options.seed("--seed", seed)
    synthetic = (options.synthetic_settings(synthetic_train, synthetic_val, synthetic_size, None)
                 if DATASETS[dataset].generated else None)
    result = run_pipeline(
        workdir=workdir, dataset=dataset, root=root, ratio=ratio, seed=seed,
        official_split=official_split, novel_classes=novel_classes, tags=tags, images=images, annotations=annotations,
        val_annotations=val_annotations, synthetic=synthetic, preset=preset, iters=iters,
        retrain_iters=retrain_iters, batch_size=batch_size,
        checkpoint_every=options.positive("--checkpoint-every", checkpoint_every),
        pseudo_scales=options.scales("--pseudo-scales", pseudo_scales), pseudo_flip=pseudo_flip,
        pseudo_among=pseudo_among, pseudo_unnamed=pseudo_unnamed, retrain_from=retrain_from, rounds=rounds,
        overrides=set_ or (), train_overrides=train_set or (), device=device, reporter=RichReporter("pipeline"),
    )
    print_pipeline_table(result.one_stage, result.retrained, result.pseudo_label_novel_miou, result.workdir)
    if json_out:
        print_json({"one_stage": result.one_stage.model_dump(mode="json"),
                    "retrained": result.retrained.model_dump(mode="json"),
                    "pseudo_label_novel_miou": result.pseudo_label_novel_miou, "seconds": result.seconds})
