"""The ``simformer`` command: one thin Typer command per stage, parsing only.

Errors: a :class:`~simformer_cli.errors.UserError` prints one line and exits 2 (so does running out
of memory, with what to reduce); Ctrl-C exits 130 and SIGTERM 143, each with one line saying how
to continue; anything else is a bug, exits 1, and shows its traceback only with ``--debug``
(anywhere on the line) or ``SIMFORMER_DEBUG=1``.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

from simformer_cli import __version__
from simformer_cli.console import RichReporter, print_json, stderr
from simformer_cli.errors import UserError
from simformer_cli.progress import hold_point

app = typer.Typer(
    name="simformer",
    help="Weak-shot semantic segmentation with SimFormer: split, train, infer, pseudolabel, retrain, eval.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (human output stays on stderr).")]
ForceOption = Annotated[bool, typer.Option("--force", help="Rebuild even if the output is up to date.")]
SetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override one training setting, KEY=VALUE with a dotted key (repeatable), "
                  "e.g. --set loss.distill_weight=0.3 --set model.num_queries=32.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"simformer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of unexpected errors "
                                                       "(accepted anywhere on the command line).")] = False,
) -> None:
    """``--debug`` is taken off the command line by :func:`run` wherever it is, so no command sees it."""


@app.command()
def split(
    dataset: Annotated[str, typer.Option(help="synthetic | ade20k | coco-stuff-10k | folder")] = "synthetic",
    root: Annotated[Optional[Path], typer.Option(help="Dataset folder (default: $SIMFORMER_DATASETS, else ./datasets).")] = None,
    ratio: Annotated[Optional[str], typer.Option(help="BASE:NOVEL class ratio for a seeded random split (default 3:1).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the ratio split (default 0).")] = None,
    official_split: Annotated[Optional[int], typer.Option(help="A published split: ADE20K 1-4, COCO-Stuff-10K 1-9.")] = None,
    novel_classes: Annotated[Optional[str], typer.Option(help="Comma-separated novel class names or ids.")] = None,
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
    from simformer_cli.pipeline.split import run_split
    from simformer_cli.report import print_split_summary

    _choice("--dataset", dataset, ("synthetic", "ade20k", "coco-stuff-10k", "folder"))
    synthetic = _synthetic_settings(synthetic_train, synthetic_val, synthetic_size, synthetic_seed, synthetic_test,
                                    synthetic_presence)
    result = run_split(
        dataset=dataset,  # type: ignore[arg-type]
        root=root, out=out, ratio=ratio, seed=_seed("--seed", seed), official_split=official_split,
        novel_classes=novel_classes, keep_train_labels=keep_train_labels, synthetic=synthetic, holdout=holdout,
        force=force,
        workers=_workers(workers),
        reporter=RichReporter("split"),
    )
    print_split_summary(result.manifest, result.path, result.digest)
    if json_out:
        print_json(result.manifest.model_dump(mode="json"))


def _synthetic_settings(train: int | None, val: int | None, size: int | None, seed: int | None,  # noqa: ANN202
                        test: int | None = None, presence: str | None = None):
    from simformer_cli.data.synthetic import parse_presence
    from simformer_cli.settings.synthetic import SyntheticSettings

    options = {"train_images": ("--synthetic-train", train), "val_images": ("--synthetic-val", val),
               "test_images": ("--synthetic-test", test),
               "image_size": ("--synthetic-size", size), "seed": ("--synthetic-seed", seed),
               "class_presence": ("--synthetic-presence", None if presence is None else parse_presence(presence))}
    try:
        return SyntheticSettings(**{key: value for key, (_, value) in options.items() if value is not None})
    except ValueError as exc:
        if not hasattr(exc, "errors"):
            raise UserError(f"synthetic settings: {exc}") from None
        first = exc.errors()[0]
        option, value = options.get(str(first["loc"][0]) if first["loc"] else "", ("", None))
        where = f"{option} {value}" if option else "synthetic settings"
        raise UserError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None


@app.command()
def train(
    split: Annotated[Path, typer.Option(help="Split artifact to train on.")],
    out: Annotated[Optional[Path], typer.Option(help="Output model artifact (default: beside the split, model.zarr).")] = None,
    preset: Annotated[str, typer.Option(help="tiny (CPU minutes) | paper (ResNet-50, GPUs).")] = "tiny",
    method: Annotated[str, typer.Option(help="simformer (weak labels) | oracle (full train labels: an upper bound) | "
                                             "cam (the CAM baseline: a classifier for pseudolabel).")] = "simformer",
    iters: Annotated[Optional[int], typer.Option(help="Training steps (default: the preset's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Global batch: images per step over all devices.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Base learning rate (default: the preset's).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of initialisation, data order and augmentation.")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Write a resumable checkpoint every N steps.")] = 100,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint of this run.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    workers: Annotated[Optional[int], typer.Option(help="Data-loading worker processes (default: 0 on CPU, where "
                                                       "the training threads use every core; up to 4 on CUDA).")] = None,
    backbone_weights: Annotated[Optional[Path], typer.Option(help="Local torchvision-layout ResNet weights (.pth).")] = None,
    set_: SetOption = None,
    force: ForceOption = False,
    json_out: JsonOption = False,
) -> None:
    """Train SimFormer on a split (weak labels only) into a model artifact."""
    from simformer_cli.pipeline.train import run_train

    result = run_train(
        split=split, out=out, preset=_choice("--preset", preset, ("tiny", "paper")),
        method=_choice("--method", method, ("simformer", "oracle", "cam")), iters=iters,
        batch_size=batch_size, lr=lr, seed=seed, overrides=set_ or (), checkpoint_every=_positive("--checkpoint-every", checkpoint_every),
        resume=resume, device=_choice("--device", device, ("auto", "cpu", "cuda")),
        workers=_workers(workers), backbone_weights=backbone_weights, force=force, reporter=RichReporter("train"),
    )
    summary = result.manifest.summary
    stderr.print(f"model {result.path}: {summary.steps} steps, {summary.images_per_second:.1f} images/s, "
                 f"final loss {sum(summary.final_losses.values()):.3f}", markup=False)
    if json_out:
        print_json(result.manifest.model_dump(mode="json"))


@app.command()
def infer(
    model: Annotated[Path, typer.Option(help="Model artifact.")],
    split: Annotated[Optional[Path], typer.Option(help="Split artifact whose images to segment.")] = None,
    subset: Annotated[str, typer.Option(help="val | train | test | holdout (with --split; test and holdout where the split has them).")] = "val",
    images: Annotated[Optional[Path], typer.Option(help="Instead of a split: a folder of .jpg/.png images.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output predictions artifact (default: beside the model).")] = None,
    scales: Annotated[str, typer.Option(help="Test-time scale factors, e.g. 0.75,1,1.25 (scores averaged).")] = "1",
    flip: Annotated[bool, typer.Option("--flip", help="Also average horizontally mirrored views.")] = False,
    save_scores: Annotated[bool, typer.Option("--save-scores", help="Keep per-class scores at 1/4 resolution.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    force: ForceOption = False,
    json_out: JsonOption = False,
) -> None:
    """Segment a split subset (val by default) or a folder of images into a predictions artifact."""
    from simformer_cli.pipeline.infer import run_infer

    result = run_infer(
        model=model, split=split, subset=_choice("--subset", subset, ("val", "train", "test", "holdout")), images=images, out=out,
        scales=_scales("--scales", scales), flip=flip, save_scores=save_scores,
        device=_choice("--device", device, ("auto", "cpu", "cuda")), force=force, reporter=RichReporter("infer"),
    )
    summary = result.manifest.summary
    stderr.print(f"predictions {result.path}: {summary.images} images, {summary.images_per_second:.1f} images/s",
                 markup=False)
    if json_out:
        print_json(result.manifest.model_dump(mode="json"))


@app.command()
def pseudolabel(
    model: Annotated[Path, typer.Option(help="Model artifact (the one-stage SimFormer, or a --method cam model).")],
    split: Annotated[Path, typer.Option(help="The split the model was trained on (its train images are labelled).")],
    out: Annotated[Optional[Path], typer.Option(help="Output pseudo-label artifact (default: beside the split).")] = None,
    scales: Annotated[str, typer.Option(help="Test-time scale factors (the ADE20K recipe uses 0.625,0.9375,1.25,1.5625,1.875).")] = "1",
    flip: Annotated[bool, typer.Option("--flip", help="Also average horizontally mirrored views.")] = False,
    min_score: Annotated[Optional[float], typer.Option(help="Novel pixels scoring below this become ignore (default: off; "
                                                            "a CAM model's own cam.min_score).")] = None,
    among: Annotated[str, typer.Option(help="all: argmax over all classes, kept if a novel class of the image (the paper); "
                                            "image: pixels without base ground truth take the best novel class of the image.")] = "all",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    force: ForceOption = False,
    json_out: JsonOption = False,
) -> None:
    """Label the training images' novel pixels with the model's predictions (base ground truth kept)."""
    from simformer_cli.pipeline.pseudolabel import run_pseudolabel

    if min_score is not None and not 0 <= min_score <= 1:
        raise UserError(f"--min-score {min_score}: expected a score between 0 and 1")
    result = run_pseudolabel(model=model, split=split, out=out, scales=_scales("--scales", scales), flip=flip,
                             min_score=min_score, among=_choice("--among", among, ("all", "image")),
                             device=_choice("--device", device, ("auto", "cpu", "cuda")),
                             force=force, reporter=RichReporter("pseudolabel"))
    summary = result.manifest.summary
    quality = "" if summary.novel_miou_vs_audit is None else f", novel mIoU vs full train labels {summary.novel_miou_vs_audit:.1f}"
    stderr.print(f"pseudo labels {result.path}: {summary.images} images, novel pixels {summary.novel_pixel_share:.1%}, "
                 f"ignore {summary.ignore_pixel_share:.1%}{quality}", markup=False)
    if json_out:
        print_json(result.manifest.model_dump(mode="json"))


@app.command()
def retrain(
    split: Annotated[Path, typer.Option(help="Split artifact.")],
    pseudolabels: Annotated[Path, typer.Option(help="Pseudo-label artifact made from this split.")],
    init_from: Annotated[Optional[Path], typer.Option(help="Start from this model's weights (the one-stage model of this split) instead of the preset's initialisation.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output model artifact (default: beside the split, model-retrained.zarr).")] = None,
    preset: Annotated[str, typer.Option(help="tiny | paper")] = "tiny",
    iters: Annotated[Optional[int], typer.Option(help="Training steps (default: the preset's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Global batch: images per step over all devices.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Base learning rate (default: the preset's).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of initialisation, data order and augmentation.")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Write a resumable checkpoint every N steps.")] = 100,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint of this run.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    workers: Annotated[Optional[int], typer.Option(help="Data-loading worker processes (default: 0 on CPU, where "
                                                       "the training threads use every core; up to 4 on CUDA).")] = None,
    backbone_weights: Annotated[Optional[Path], typer.Option(help="Local torchvision-layout ResNet weights (.pth).")] = None,
    set_: SetOption = None,
    force: ForceOption = False,
    json_out: JsonOption = False,
) -> None:
    """Retrain a plain MaskFormer on base ground truth + novel pseudo labels."""
    from simformer_cli.pipeline.retrain import run_retrain

    result = run_retrain(
        split=split, pseudolabels=pseudolabels, out=out, init_from=init_from,
        preset=_choice("--preset", preset, ("tiny", "paper")),
        iters=iters, batch_size=batch_size, lr=lr, seed=seed, overrides=set_ or (),
        checkpoint_every=_positive("--checkpoint-every", checkpoint_every), resume=resume,
        device=_choice("--device", device, ("auto", "cpu", "cuda")),
        workers=_workers(workers), backbone_weights=backbone_weights, force=force, reporter=RichReporter("retrain"),
    )
    summary = result.manifest.summary
    stderr.print(f"model {result.path}: {summary.steps} steps, {summary.images_per_second:.1f} images/s", markup=False)
    if json_out:
        print_json(result.manifest.model_dump(mode="json"))


@app.command()
def pipeline(
    workdir: Annotated[Path, typer.Option(help="Folder for every artifact of the chain.")] = Path("runs/syn"),
    dataset: Annotated[str, typer.Option(help="synthetic | ade20k | coco-stuff-10k | folder")] = "synthetic",
    root: Annotated[Optional[Path], typer.Option(help="Dataset folder (default: $SIMFORMER_DATASETS, else ./datasets).")] = None,
    ratio: Annotated[Optional[str], typer.Option(help="BASE:NOVEL class ratio (default 3:1).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the ratio split.")] = None,
    official_split: Annotated[Optional[int], typer.Option(help="A published split: ADE20K 1-4, COCO-Stuff-10K 1-9.")] = None,
    novel_classes: Annotated[Optional[str], typer.Option(help="Comma-separated novel class names or ids.")] = None,
    synthetic_train: Annotated[Optional[int], typer.Option(help="Synthetic data: training images.")] = None,
    synthetic_val: Annotated[Optional[int], typer.Option(help="Synthetic data: validation images.")] = None,
    synthetic_size: Annotated[Optional[int], typer.Option(help="Synthetic data: image side in pixels.")] = None,
    preset: Annotated[str, typer.Option(help="tiny | paper")] = "tiny",
    iters: Annotated[Optional[int], typer.Option(help="Training steps of train (and retrain, unless --retrain-iters).")] = None,
    retrain_iters: Annotated[Optional[int], typer.Option(help="Training steps of retrain.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Global batch: images per step.")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N training steps.")] = 50,
    pseudo_scales: Annotated[str, typer.Option(help="Test-time scales of pseudo-labelling.")] = "1",
    pseudo_flip: Annotated[bool, typer.Option("--pseudo-flip", help="Flip views when pseudo-labelling.")] = False,
    pseudo_among: Annotated[str, typer.Option(help="pseudolabel --among: all (the paper) | image.")] = "all",
    retrain_from: Annotated[str, typer.Option(help="Retraining starts from: one-stage (its weights, retrain --init-from) | scratch (the preset's initialisation, as the paper).")] = "one-stage",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    json_out: JsonOption = False,
) -> None:
    """Run the whole chain into one folder; rerunning skips finished stages and resumes interrupted ones."""
    from simformer_cli.pipeline.chain import run_pipeline
    from simformer_cli.report import print_pipeline_table

    result = run_pipeline(
        workdir=workdir, dataset=_choice("--dataset", dataset, ("synthetic", "ade20k", "coco-stuff-10k", "folder")),
        root=root, ratio=ratio, seed=_seed("--seed", seed), official_split=official_split, novel_classes=novel_classes,
        synthetic=_synthetic_settings(synthetic_train, synthetic_val, synthetic_size, None) if dataset == "synthetic" else None,
        preset=_choice("--preset", preset, ("tiny", "paper")), iters=iters, retrain_iters=retrain_iters,
        batch_size=batch_size, checkpoint_every=_positive("--checkpoint-every", checkpoint_every),
        pseudo_scales=_scales("--pseudo-scales", pseudo_scales), pseudo_flip=pseudo_flip,
        pseudo_among=_choice("--pseudo-among", pseudo_among, ("all", "image")),
        retrain_from=_choice("--retrain-from", retrain_from, ("one-stage", "scratch")),
        device=_choice("--device", device, ("auto", "cpu", "cuda")), reporter=RichReporter("pipeline"),
    )
    print_pipeline_table(result.one_stage, result.retrained, result.pseudo_label_novel_miou, result.workdir)
    if json_out:
        print_json({"one_stage": result.one_stage.model_dump(mode="json"),
                    "retrained": result.retrained.model_dump(mode="json"),
                    "pseudo_label_novel_miou": result.pseudo_label_novel_miou, "seconds": result.seconds})


@app.command(name="eval")
def evaluate(
    predictions: Annotated[Path, typer.Option(help="Predictions artifact (from infer on a split).")],
    split: Annotated[Path, typer.Option(help="The split the predictions were made on (ground truth).")],
    out: Annotated[Optional[Path], typer.Option(help="Output metrics artifact (default: beside the predictions).")] = None,
    chart: Annotated[bool, typer.Option(help="Write a per-class IoU bar chart (iou.png) into the artifact.")] = True,
    json_out: JsonOption = False,
) -> None:
    """Compare predictions with ground truth: mIoU (both conventions), base, novel, hIoU, per class."""
    from simformer_cli.pipeline.evaluate import run_eval
    from simformer_cli.report import print_eval_report

    result = run_eval(predictions=predictions, split=split, out=out, chart=chart, reporter=RichReporter("eval"))
    print_eval_report(result.manifest.summary, result.path)
    if json_out:
        print_json(result.manifest.summary.model_dump(mode="json"))


@app.command()
def viz(
    predictions: Annotated[Path, typer.Option(help="Predictions artifact.")],
    out: Annotated[Path, typer.Option(help="Folder for the PNG overlays.")],
    split: Annotated[Optional[Path], typer.Option(help="The split the predictions were made on (images and ground truth).")] = None,
    images: Annotated[Optional[Path], typer.Option(help="The image folder the predictions were made on.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many images (0 = all).")] = 16,
) -> None:
    """Write image | ground truth | prediction overlays with a class legend, one PNG per image."""
    from simformer_cli.pipeline.visualize import run_viz

    written = run_viz(predictions=predictions, out=out, split=split, images=images,
                      limit=_non_negative("--limit", limit), reporter=RichReporter("viz"))
    stderr.print(f"wrote {len(written)} overlays to {out}", markup=False)


@app.command()
def export(
    predictions: Annotated[Path, typer.Option(help="Predictions artifact.")],
    out: Annotated[Path, typer.Option(help="coco: a .json file; png: a folder.")],
    format: Annotated[str, typer.Option("--format", help="coco (RLE results JSON) | png (one label PNG per image)")] = "coco",
) -> None:
    """Export predictions as COCO-style RLE results or as label PNGs."""
    from simformer_cli.pipeline.export import run_export

    path = run_export(predictions=predictions, out=out, format=_choice("--format", format, ("coco", "png")),
                      reporter=RichReporter("export"))
    stderr.print(f"exported {path}", markup=False)


def _floats(option: str, text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"{option} {text!r}: expected comma-separated numbers, e.g. 0.75,1,1.25") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):  # nan and inf are floats too
        raise UserError(f"{option} {text!r}: expected positive numbers, e.g. 0.75,1,1.25")
    return values


def _scales(option: str, text: str) -> tuple[float, ...]:
    """Test-time scale factors: positive, at most MAX_SCALE each and MAX_SCALES of them (a view's
    memory grows with the square of its scale, so an absurd factor is refused before any work)."""
    from simformer_cli.settings.test_time import MAX_SCALE, MAX_SCALES

    values = _floats(option, text)
    if max(values) > MAX_SCALE or len(values) > MAX_SCALES:
        raise UserError(f"{option} {text!r}: expected at most {MAX_SCALES} factors of at most {MAX_SCALE:g} each "
                        "(a view's memory grows with the square of its scale), e.g. 0.75,1,1.25")
    return values


#: Worker processes of split and train: more never helps (the work is CPU-bound) and each costs memory.
MAX_WORKERS = 64


def _workers(value: int | None) -> int | None:
    if value is not None and not 0 <= value <= MAX_WORKERS:
        raise UserError(f"--workers {value}: expected 0 to {MAX_WORKERS} worker processes")
    return value


def _seed(option: str, value: int | None) -> int | None:
    from simformer_cli.settings.training import MAX_SEED

    if value is not None and not 0 <= value <= MAX_SEED:
        raise UserError(f"{option} {value}: expected an integer from 0 to {MAX_SEED} (2**63 - 1)")
    return value


def _choice(option: str, value: str, allowed: tuple[str, ...]):  # noqa: ANN202
    if value not in allowed:
        raise UserError(f"{option} {value!r}: expected one of {', '.join(allowed)}")
    return value


def _non_negative(option: str, value: int) -> int:
    if value < 0:
        raise UserError(f"{option} {value}: must be 0 or more")
    return value


def _positive(option: str, value: int) -> int:
    if value < 1:
        raise UserError(f"{option} {value}: must be at least 1")
    return value


@app.command()
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


def _error_line(message: str) -> None:
    """One unwrapped line on stderr, whatever the terminal width."""
    sys.stderr.write(" ".join(message.split()) + "\n")
    sys.stderr.flush()


def _click_classes(name: str) -> tuple[type[BaseException], ...]:
    """The click exception class called NAME as Typer raises it.

    Older Typer re-exports click's classes; Typer 0.29 and later vendors its own copy of click and
    no longer installs click, so the classes are found through Typer's own exceptions, never by
    importing click.
    """
    found = tuple(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == name)
    if not found:
        raise ImportError(f"this version of typer has no {name} exception; install typer>=0.12")
    return found


_CLICK_ERRORS = _click_classes("ClickException")
_USAGE_ERRORS = _click_classes("UsageError")
_ABORTS = (typer.Abort,)  # click.exceptions.Abort in older Typer, its own class since 0.29


#: What a rerun of each command does with the work an interrupted run left (see _interrupted_hint).
_CONTINUES = {
    "infer": "to continue from the last finished shard (predicted images are kept)",
    "pseudolabel": "to continue from the last finished shard (labelled images are kept)",
    "pipeline": ("to continue: finished stages are skipped, training resumes from its last checkpoint and "
                 "prediction from its last finished shard"),
}
_STARTS_OVER = ("split", "eval", "viz", "export")


def _interrupted_hint(args: list[str]) -> str:
    """How to continue after Ctrl-C or SIGTERM, the truth for each command: train and retrain resume
    with --resume, infer, pseudolabel and pipeline resume by themselves, the rest start over."""
    command = next((a for a in args if not a.startswith("-")), "")
    if command in ("train", "retrain") and "--resume" not in args:
        return ("interrupted; run the same command again with --resume to continue from the last checkpoint "
                "(without it, training starts over)")
    if command in ("train", "retrain"):
        return "interrupted; run the same command again to continue from the last checkpoint"
    if command in _CONTINUES:
        return f"interrupted; run the same command again {_CONTINUES[command]}"
    if command in _STARTS_OVER:
        return (f"interrupted; run the same command again to start over ({command} does not resume; "
                "nothing half-written is kept as its output)")
    return "interrupted"


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers and ``docker stop`` send), raised where Ctrl-C raises KeyboardInterrupt,
    so that every clean-up Ctrl-C runs (staging folders, worker pools, checkpoints) runs for it too."""


_terminated = False  # set once SIGTERM arrived: whatever fails after it is the termination's doing


def _on_sigterm(signum: int, frame: object) -> None:
    global _terminated
    _terminated = True
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough; a second must not break the clean-up
    raise Terminated()


def _interrupted(args: list[str]) -> int:
    _error_line(_interrupted_hint(args))
    return 143 if _terminated else 130


#: What to reduce when a command runs out of memory.
_MEMORY_ADVICE = {
    "train": "lower --batch-size (or the crop, --set augment.crop=N)",
    "retrain": "lower --batch-size (or the crop, --set augment.crop=N)",
    "infer": "use fewer or smaller --scales and no --flip",
    "pseudolabel": "use fewer or smaller --scales and no --flip",
    "pipeline": "lower --batch-size and use fewer or smaller --pseudo-scales",
    "split": "use fewer --workers",
}


def _out_of_memory(exc: BaseException) -> bool:
    """MemoryError (Python, numpy) or torch's allocators failing (CPU: DefaultCPUAllocator; CUDA)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


def _memory_line(args: list[str]) -> str:
    command = next((a for a in args if not a.startswith("-")), "simformer")
    advice = _MEMORY_ADVICE.get(command, "")
    return (f"error: {command} ran out of memory; {advice + ', ' if advice else ''}"
            "or free memory (close other programs, raise the memory limit)")


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit status (what tests call).

    ``--debug`` is accepted anywhere on the line (before or after the command and its options).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("SIMFORMER_DEBUG") == "1"
    args = [arg for arg in args if arg != "--debug"]
    try:
        result = app(args=args, prog_name="simformer", standalone_mode=False)
    except _CLICK_ERRORS as exc:
        if isinstance(exc, _USAGE_ERRORS) and type(exc).__name__ != "NoArgsIsHelpError":
            context = getattr(exc, "ctx", None)
            where = context.command_path if context is not None else "simformer"
            message = exc.format_message().strip()
            _error_line(f"error: {message}{'' if message.endswith(('.', '?')) else '.'} See `{where} --help`")
        else:
            exc.show(file=sys.stderr)
        return exc.exit_code
    except (*_ABORTS, KeyboardInterrupt):
        return _interrupted(args)
    except UserError as exc:
        _error_line(f"error: {exc}")
        return exc.exit_code
    except Exception as exc:  # a bug: say so briefly unless asked for the traceback
        if _terminated:  # e.g. a data-loading worker that the same SIGTERM stopped first
            return _interrupted(args)
        if debug:
            traceback.print_exc()
        if _out_of_memory(exc):
            _error_line(_memory_line(args))
            return UserError.exit_code
        _error_line(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        return 1
    if result == 130:  # typer turns Ctrl-C into this exit status itself
        return _interrupted(args)
    return result if isinstance(result, int) else 0


def main() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    code = run()
    if code == 0:
        try:  # test hook: tests signal a stage here, after its work, to check that nothing is undone
            hold_point("exit", 0)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM after the work: it is done, say nothing more
            pass
    if code in (130, 143):
        # After Ctrl-C, zarr's I/O thread may still hold pending tasks that asyncio reports at
        # interpreter shutdown, after our one-line hint: leave at once (artifacts are already safe).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
