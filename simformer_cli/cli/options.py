"""Options several commands share, the checks every numeric option gets before any work starts,
and how a command's examples are laid out in its ``--help``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Optional, get_args

import typer

from simformer_cli.errors import UserError
from simformer_cli.settings.choices import DeviceChoice
from simformer_cli.settings.test_time import MAX_SCALE, MAX_SCALES
from simformer_cli.settings.training import MAX_SEED

#: Worker processes of split and train: more never helps (the work is CPU-bound) and each costs memory.
MAX_WORKERS = 64
#: Threads of one process: far more than any machine's cores only adds scheduling overhead.
MAX_THREADS = 1024


def choice(option: str, allowed: Any, **kwargs: Any) -> Any:
    """A ``typer.Option`` that takes one of ``allowed`` (a ``Literal`` type or a sequence of names),
    shows them in ``--help`` and refuses anything else with one line naming them."""
    names: tuple[str, ...] = get_args(allowed) or tuple(allowed)

    def parse(value: str) -> str:
        if value not in names:
            raise UserError(f"{option} {value!r}: expected one of {', '.join(names)}")
        return value

    return typer.Option(option, parser=parse, metavar=f"[{'|'.join(names)}]", **kwargs)


def examples(*commands: str) -> str:
    """A command's ``--help`` epilog: example command lines, kept as written."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {command}" for command in commands)


JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (human output stays on stderr).")]
ForceOption = Annotated[bool, typer.Option("--force", help="Rebuild even if the output is up to date.")]
SetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override one training setting, KEY=VALUE with a dotted key (repeatable), "
                  "e.g. --set loss.distill_weight=0.3 --set model.num_queries=32.")]
DeviceOption = Annotated[DeviceChoice, choice("--device", DeviceChoice, help="Where to run: CUDA when PyTorch sees a GPU "
                                                                             "(auto), or the one named.")]
RootOption = Annotated[Optional[Path], typer.Option(help="Dataset folder (default: $SIMFORMER_DATASETS, else ./datasets).")]
ThreadsOption = Annotated[Optional[int], typer.Option(
    help="CPU threads of this process (default: OMP_NUM_THREADS, else PyTorch's choice, at most the cores it "
         "may use). On a shared "
         "machine give each process its share: processes that each use every core slow one another down many "
         "times over. The count changes float sums, so the same count reproduces the same weights.")]
ImagesOption = Annotated[Optional[Path], typer.Option(
    help="coco-json: the folder the annotation files' file_name entries are relative to.")]
AnnotationsOption = Annotated[Optional[Path], typer.Option(
    help="coco-json: COCO JSON of the training images (polygons or RLE, as annotation tools export).")]
ValAnnotationsOption = Annotated[Optional[Path], typer.Option(
    help="coco-json: COCO JSON of the val images (same categories; may hold no annotations).")]
TagsOption = Annotated[Optional[Path], typer.Option(
    help="Tag file naming the novel classes each image shows (CSV image,labels or JSON image -> [classes]); the "
         "masks then hold base classes only. Every training image needs a row.")]
WorkersOption = Annotated[Optional[int], typer.Option(help="Data-loading worker processes (default: 0 on CPU, where "
                                                           "the training threads use every core; up to 4 on CUDA).")]


def floats(option: str, text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"{option} {text!r}: expected comma-separated numbers, e.g. 0.75,1,1.25") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):  # nan and inf are floats too
        raise UserError(f"{option} {text!r}: expected positive numbers, e.g. 0.75,1,1.25")
    return values


def scales(option: str, text: str) -> tuple[float, ...]:
    """Test-time scale factors: positive, at most MAX_SCALE each and MAX_SCALES of them (a view's
    memory grows with the square of its scale, so an absurd factor is refused before any work)."""
    values = floats(option, text)
    if max(values) > MAX_SCALE or len(values) > MAX_SCALES:
        raise UserError(f"{option} {text!r}: expected at most {MAX_SCALES} factors of at most {MAX_SCALE:g} each "
                        "(a view's memory grows with the square of its scale), e.g. 0.75,1,1.25")
    return values


def workers(value: int | None) -> int | None:
    if value is not None and not 0 <= value <= MAX_WORKERS:
        raise UserError(f"--workers {value}: expected 0 to {MAX_WORKERS} worker processes")
    return value


def use_threads(value: int | None) -> int:
    """Check ``--threads`` and give this process that many torch threads."""
    if value is not None and not 1 <= value <= MAX_THREADS:
        raise UserError(f"--threads {value}: expected 1 to {MAX_THREADS}")
    from simformer_cli.devices import use_threads as set_threads  # torch: imported only when a command runs

    return set_threads(value)


def seed(option: str, value: int | None) -> int | None:
    if value is not None and not 0 <= value <= MAX_SEED:
        raise UserError(f"{option} {value}: expected an integer from 0 to {MAX_SEED} (2**63 - 1)")
    return value


def non_negative(option: str, value: int) -> int:
    if value < 0:
        raise UserError(f"{option} {value}: must be 0 or more")
    return value


def boundary_band(value: int) -> int:
    from simformer_cli.artifacts.metrics import MAX_BOUNDARY_BAND

    if not 0 <= value <= MAX_BOUNDARY_BAND:
        raise UserError(f"--boundary-band {value}: expected 0 (off) to {MAX_BOUNDARY_BAND} pixels, e.g. 3")
    return value


def positive(option: str, value: int) -> int:
    if value < 1:
        raise UserError(f"{option} {value}: must be at least 1")
    return value


def synthetic_settings(train: int | None, val: int | None, size: int | None, seed: int | None,  # noqa: ANN201
                       test: int | None = None, presence: str | None = None):
    """The synthetic generator's settings from the ``--synthetic-*`` options; a bad value is refused
    naming its option."""
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
