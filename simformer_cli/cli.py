"""The ``simformer`` command: one thin Typer command per stage, parsing only.

Errors: a :class:`~simformer_cli.errors.UserError` prints one line and exits 2; an interrupt
exits 130 with a hint on resuming; anything else is a bug, exits 1, and shows its traceback only
with ``--debug`` (or ``SIMFORMER_DEBUG=1``).
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import click
import typer

from simformer_cli import __version__
from simformer_cli.console import RichReporter, print_json, stderr
from simformer_cli.errors import UserError

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


def _version(value: bool) -> None:
    if value:
        typer.echo(f"simformer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")] = False,
) -> None:
    if debug:
        os.environ["SIMFORMER_DEBUG"] = "1"


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
    synthetic_train: Annotated[Optional[int], typer.Option(help="Synthetic data: training images.")] = None,
    synthetic_val: Annotated[Optional[int], typer.Option(help="Synthetic data: validation images.")] = None,
    synthetic_size: Annotated[Optional[int], typer.Option(help="Synthetic data: image side in pixels.")] = None,
    synthetic_seed: Annotated[Optional[int], typer.Option(help="Synthetic data: generator seed.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes (default: all cores, at most 8).")] = None,
    force: ForceOption = False,
    json_out: JsonOption = False,
) -> None:
    """Choose base/novel classes and ingest a dataset into a split artifact."""
    from simformer_cli.pipeline.split import run_split
    from simformer_cli.report import print_split_summary

    if dataset not in ("synthetic", "ade20k", "coco-stuff-10k", "folder"):
        raise UserError(f"--dataset {dataset!r}: expected synthetic, ade20k, coco-stuff-10k or folder")
    synthetic = _synthetic_settings(synthetic_train, synthetic_val, synthetic_size, synthetic_seed)
    result = run_split(
        dataset=dataset,  # type: ignore[arg-type]
        root=root, out=out, ratio=ratio, seed=seed, official_split=official_split, novel_classes=novel_classes,
        keep_train_labels=keep_train_labels, synthetic=synthetic, force=force, workers=workers,
        reporter=RichReporter(),
    )
    print_split_summary(result.manifest, result.path, result.digest)
    if json_out:
        print_json(result.manifest.model_dump(mode="json"))


def _synthetic_settings(train: int | None, val: int | None, size: int | None, seed: int | None):  # noqa: ANN202
    from simformer_cli.data.synthetic import SyntheticSettings

    overrides = {key: value for key, value in (("train_images", train), ("val_images", val),
                                               ("image_size", size), ("seed", seed)) if value is not None}
    try:
        return SyntheticSettings(**overrides)
    except ValueError as exc:
        raise UserError(f"synthetic settings: {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}") from None


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


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit status (what tests call)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("SIMFORMER_DEBUG") == "1"
    try:
        result = app(args=args, prog_name="simformer", standalone_mode=False)
    except click.ClickException as exc:
        exc.show(file=sys.stderr)
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        _error_line("interrupted; run the same command again to continue (stages resume from what is on disk)")
        return 130
    except UserError as exc:
        _error_line(f"error: {exc}")
        return exc.exit_code
    except Exception as exc:  # a bug: say so briefly unless asked for the traceback
        if debug:
            traceback.print_exc()
        _error_line(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        return 1
    return result if isinstance(result, int) else 0


def main() -> None:
    sys.exit(run())
