"""``simformer split`` (a dataset -> a split artifact) and ``simformer schema`` (the manifests' JSON Schema)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from simformer_cli.cli import options
from simformer_cli.cli.console import RichReporter, print_json, stderr
from simformer_cli.cli.options import (
    AnnotationsOption, ForceOption, ImagesOption, JsonOption, RootOption, TagsOption, ValAnnotationsOption, choice,
    examples,
)
from simformer_cli.data.datasets import DATASETS

SPLIT_EXAMPLES = examples(
    "simformer split --dataset synthetic --ratio 3:1 --seed 0 --out runs/syn/split.zarr",
    "simformer split --dataset ade20k --root datasets --official-split 1",
    "simformer split --dataset folder --root my_data --novel-classes car,person --json",
    "simformer split --dataset folder --root shop --tags shop/tags.csv --out runs/shop/split.zarr",
    "simformer split --dataset coco-json --images shop/images --annotations shop/train.json "
    "--val-annotations shop/val.json --tags shop/tags.json --out runs/shop/split.zarr",
)
SCHEMA_EXAMPLES = examples("simformer schema --out manifests", "simformer schema --check")


def split(
    dataset: Annotated[str, choice("--dataset", tuple(DATASETS), help="The dataset to read (synthetic: generated).")] = "synthetic",
    root: RootOption = None,
    ratio: Annotated[Optional[str], typer.Option(help="BASE:NOVEL class ratio for a seeded random split (default 3:1).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the ratio split (default 0).")] = None,
    official_split: Annotated[Optional[int], typer.Option(help="A published split: ADE20K 1-4, COCO-Stuff-10K 1-9.")] = None,
    novel_classes: Annotated[Optional[str], typer.Option(help="Comma-separated novel class names or ids.")] = None,
    tags: TagsOption = None,
    images: ImagesOption = None,
    annotations: AnnotationsOption = None,
    val_annotations: ValAnnotationsOption = None,
    out: Annotated[Optional[Path], typer.Option(help="Output artifact (default runs/DATASET-SPLIT/split.zarr).")] = None,
    keep_train_labels: Annotated[bool, typer.Option(help="Keep full train labels in an audit group (never read by training).")] = True,
    holdout: Annotated[int, typer.Option(help="Hold out this many training images (with full labels) as a 'holdout' "
                                              "subset for tuning, where val is the reported set.")] = 0,
    synthetic_train: Annotated[Optional[int], typer.Option(help="Synthetic data: training images.")] = None,
    synthetic_val: Annotated[Optional[int], typer.Option(help="Synthetic data: validation images.")] = None,
    synthetic_size: Annotated[Optional[int], typer.Option(help="Synthetic data: image side in pixels.")] = None,
    synthetic_test: Annotated[Optional[int], typer.Option(help="Synthetic data: held-out test images (0: none).")] = None,
    synthetic_seed: Annotated[Optional[int], typer.Option(help="Synthetic data: generator seed.")] = None,
    synthetic_presence: Annotated[Optional[str], typer.Option(
        help="Synthetic data: CLASS=SHARE,... the share of images containing each listed class (co-occurrence), "
             "e.g. 3=0.92,7=0.92.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes (default: all cores, at most 8).")] = None,
    force: ForceOption = False,
    json_out: JsonOption = False,
) -> None:
    """Choose base/novel classes and ingest a dataset into a split artifact."""
    from simformer_cli.cli.report import print_split_summary
    from simformer_cli.pipeline.split import run_split

    synthetic = options.synthetic_settings(synthetic_train, synthetic_val, synthetic_size, synthetic_seed,
                                           synthetic_test, synthetic_presence)
    result = run_split(
        dataset=dataset, root=root, out=out, ratio=ratio, seed=options.seed("--seed", seed),
        official_split=official_split, novel_classes=novel_classes, keep_train_labels=keep_train_labels,
        synthetic=synthetic, holdout=holdout, tags=tags, images=images, annotations=annotations,
        val_annotations=val_annotations, force=force, workers=options.workers(workers),
        reporter=RichReporter("split"),
    )
    print_split_summary(result.manifest, result.path, result.digest)
    if json_out:
        print_json(result.manifest.model_dump(mode="json"))


def schema(
    out: Annotated[Path, typer.Option(help="Folder for the JSON Schema files.")] = Path("manifests"),
    check: Annotated[bool, typer.Option("--check", help="Exit 1 if the files differ from the models instead of writing.")] = False,
) -> None:
    """Write (or check) the JSON Schema of every manifest kind."""
    from simformer_cli.artifacts.schemas import schema_files

    stale = []
    for name, text in schema_files().items():
        target = out / name
        if check:
            if not target.is_file() or target.read_text(encoding="utf-8") != text:
                stale.append(str(target))
        else:
            out.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            stderr.print(f"wrote {target}")
    if stale:
        stderr.print(f"out of date: {', '.join(stale)}; run `simformer schema` to regenerate")
        raise typer.Exit(1)
