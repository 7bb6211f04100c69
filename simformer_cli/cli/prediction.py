"""``simformer infer`` (a model -> predictions) and ``simformer pseudolabel`` (a model -> pseudo labels)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from simformer_cli.cli import options
from simformer_cli.cli.console import RichReporter, print_json, stderr
from simformer_cli.cli.options import DeviceOption, ForceOption, JsonOption, choice, examples
from simformer_cli.errors import UserError
from simformer_cli.settings.choices import APPEARS, GROUPS, Among, SubsetName, Unnamed

INFER_EXAMPLES = examples(
    "simformer infer --model runs/syn/model.zarr --split runs/syn/split.zarr",
    "simformer infer --model runs/syn/model.zarr --split runs/syn/split.zarr --subset test --scales 0.75,1,1.25 --flip",
    "simformer infer --model runs/syn/model.zarr --images photos/ --out runs/syn/photos.pred.zarr",
)
PSEUDOLABEL_EXAMPLES = examples(
    "simformer pseudolabel --model runs/syn/model.zarr --split runs/syn/split.zarr",
    "simformer pseudolabel --model runs/ade/model.zarr --split runs/ade/split.zarr "
    "--scales 0.625,0.9375,1.25,1.5625,1.875 --flip",
)

FlipOption = Annotated[bool, typer.Option("--flip", help="Also average horizontally mirrored views.")]


def infer(
    model: Annotated[Path, typer.Option(help="Model artifact.")],
    split: Annotated[Optional[Path], typer.Option(help="Split artifact whose images to segment.")] = None,
    subset: Annotated[SubsetName, choice("--subset", ("val", "train", "test", "holdout"),
                                         help="With --split: the subset to segment (test and holdout where the split "
                                              "has them).")] = "val",
    images: Annotated[Optional[Path], typer.Option(help="Instead of a split: a folder of .jpg/.png images.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output predictions artifact (default: beside the model).")] = None,
    scales: Annotated[str, typer.Option(help="Test-time scale factors, e.g. 0.75,1,1.25 (scores averaged).")] = "1",
    flip: FlipOption = False,
    save_scores: Annotated[bool, typer.Option("--save-scores", help="Keep per-class scores at 1/4 resolution.")] = False,
    device: DeviceOption = "auto",
    threads: options.ThreadsOption = None,
    force: ForceOption = False,
    json_out: JsonOption = False,
) -> None:
    """Segment a split subset (val by default) or a folder of images into a predictions artifact."""
    from simformer_cli.pipeline.infer import run_infer
    options.use_threads(threads)

    result = run_infer(
        model=model, split=split, subset=subset, images=images, out=out, scales=options.scales("--scales", scales),
        flip=flip, save_scores=save_scores, device=device, force=force, reporter=RichReporter("infer"),
    )
    summary = result.manifest.summary
    stderr.print(f"predictions {result.path}: {summary.images} images, {summary.images_per_second:.1f} images/s",
                 markup=False)
    if json_out:
        print_json(result.manifest.model_dump(mode="json"))


def pseudolabel(
    model: Annotated[Path, typer.Option(help="Model artifact (the one-stage SimFormer, or a --method cam model).")],
    split: Annotated[Path, typer.Option(help="The split the model was trained on (its train images are labelled).")],
    out: Annotated[Optional[Path], typer.Option(help="Output pseudo-label artifact (default: beside the split).")] = None,
    scales: Annotated[str, typer.Option(help="Test-time scale factors (the ADE20K recipe uses 0.625,0.9375,1.25,1.5625,1.875).")] = "1",
    flip: FlipOption = False,
    min_score: Annotated[Optional[float], typer.Option(help="Novel pixels scoring below this become ignore (default: off; "
                                                            "a CAM model's own cam.min_score).")] = None,
    among: Annotated[Among, choice("--among", Among, help="all: argmax over all classes, kept if a novel class of the "
                                                          "image (the paper); image: pixels without base ground truth "
                                                          "take the best novel class of the image; quantile: the same after ranking each class's "
                                                          "scores among its own on the training images that have it (for "
                                                          "novel classes that appear together); groups: the image's "
                                                          "novel class with the most evidence for the pixel's k-means "
                                                          "group of mask features, counted in images (likewise).")] = "all",
    groups: Annotated[int, typer.Option(help="--among groups: k-means groups of the pixels without base ground truth.")] = GROUPS,
    appears: Annotated[float, typer.Option(help="--among groups: a group appears in an image where it holds at least "
                                                "this share of the image's pixels without base ground truth.")] = APPEARS,
    unnamed: Annotated[Unnamed, choice("--unnamed", Unnamed, help="--among groups: name (a pixel whose group has no "
                                                                  "positive evidence for any novel class of its image "
                                                                  "takes the class with the most evidence) or ignore "
                                                                  "(it stays unlabelled).")] = "name",
    device: DeviceOption = "auto",
    threads: options.ThreadsOption = None,
    force: ForceOption = False,
    json_out: JsonOption = False,
) -> None:
    """Label the training images' novel pixels with the model's predictions (base ground truth kept)."""
    from simformer_cli.pipeline.pseudolabel import run_pseudolabel
    options.use_threads(threads)

    if min_score is not None and not 0 <= min_score <= 1:
        raise UserError(f"--min-score {min_score}: expected a score between 0 and 1")
    if not 2 <= groups <= 255:
        raise UserError(f"--groups {groups}: expected a number of groups from 2 to 255")
    if not 0 < appears < 1:
        raise UserError(f"--appears {appears}: expected a share between 0 and 1, e.g. 0.1")
    result = run_pseudolabel(model=model, split=split, out=out, scales=options.scales("--scales", scales), flip=flip,
                             min_score=min_score, among=among, groups=groups, appears=appears, unnamed=unnamed,
                             device=device, force=force, reporter=RichReporter("pseudolabel"))
    summary = result.manifest.summary
    quality = "" if summary.novel_miou_vs_audit is None else f", novel mIoU vs full train labels {summary.novel_miou_vs_audit:.1f}"
    stderr.print(f"pseudo labels {result.path}: {summary.images} images, novel pixels {summary.novel_pixel_share:.1%}, "
                 f"ignore {summary.ignore_pixel_share:.1%}{quality}", markup=False)
    if json_out:
        print_json(result.manifest.model_dump(mode="json"))
