"""``simformer eval`` (predictions -> metrics), ``viz`` (overlays) and ``export`` (COCO JSON or PNGs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from simformer_cli.cli import options
from simformer_cli.cli.console import RichReporter, print_json, stderr
from simformer_cli.cli.options import JsonOption, choice, examples

ExportFormat = Literal["coco", "png"]

EVAL_EXAMPLES = examples(
    "simformer eval --predictions runs/syn/model.pred-val.zarr --split runs/syn/split.zarr",
    "simformer eval --predictions runs/syn/model.pred-val.zarr --split runs/syn/split.zarr --no-chart --json",
    "simformer eval --predictions runs/syn/model.pred-val.zarr --split runs/syn/split.zarr --boundary-band 3",
)
VIZ_EXAMPLES = examples(
    "simformer viz --predictions runs/syn/model.pred-val.zarr --split runs/syn/split.zarr --out runs/syn/overlays",
    "simformer viz --predictions runs/syn/photos.pred.zarr --images photos/ --out overlays --limit 0",
)
EXPORT_EXAMPLES = examples(
    "simformer export --predictions runs/syn/model.pred-val.zarr --out results.json",
    "simformer export --predictions runs/syn/model.pred-val.zarr --format png --out labels/",
)


def evaluate(
    predictions: Annotated[Path, typer.Option(help="Predictions artifact (from infer on a split).")],
    split: Annotated[Path, typer.Option(help="The split the predictions were made on (ground truth).")],
    out: Annotated[Optional[Path], typer.Option(help="Output metrics artifact (default: beside the predictions).")] = None,
    chart: Annotated[bool, typer.Option(help="Write a per-class IoU bar chart (iou.png) into the artifact.")] = True,
    boundary_band: Annotated[int, typer.Option(help="Also score the pixels within N pixels of a label edge "
                                                    "(boundary mIoU); 0 = off.")] = 0,
    json_out: JsonOption = False,
) -> None:
    """Compare predictions with ground truth: mIoU (both conventions), base, novel, hIoU, per class."""
    from simformer_cli.cli.report import print_eval_report
    from simformer_cli.pipeline.evaluate import run_eval

    result = run_eval(predictions=predictions, split=split, out=out, chart=chart,
                      boundary_band=options.boundary_band(boundary_band), reporter=RichReporter("eval"))
    print_eval_report(result.manifest.summary, result.path)
    labels = result.manifest.provenance.labels
    if labels is not None:
        files = "".join(f"; {f.role} {f.path} (sha256 {f.sha256[:12]})" for f in labels.files)
        stderr.print(f"labels: base masks: {labels.base_masks}; novel labels: {labels.novel_labels}{files}",
                     markup=False)
    if json_out:
        print_json(result.manifest.summary.model_dump(mode="json"))


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
                      limit=options.non_negative("--limit", limit), reporter=RichReporter("viz"))
    stderr.print(f"wrote {len(written)} overlays to {out}", markup=False)


def export(
    predictions: Annotated[Path, typer.Option(help="Predictions artifact.")],
    out: Annotated[Path, typer.Option(help="coco: a .json file; png: a folder.")],
    format: Annotated[ExportFormat, choice("--format", ExportFormat, help="coco: RLE results JSON; png: one label PNG "
                                                                           "per image.")] = "coco",
) -> None:
    """Export predictions as COCO-style RLE results or as label PNGs."""
    from simformer_cli.pipeline.export import run_export

    path = run_export(predictions=predictions, out=out, format=format, reporter=RichReporter("export"))
    stderr.print(f"exported {path}", markup=False)
