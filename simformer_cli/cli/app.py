"""The ``simformer`` command: the Typer app, its commands in stage order, and how it ends.

Errors: a :class:`~simformer_cli.errors.UserError` prints one line and exits 2 (so does running out
of memory, with what to reduce); Ctrl-C exits 130 and SIGTERM 143, each with one line saying how
to continue; anything else is a bug, exits 1, and shows its traceback only with ``--debug``
(anywhere on the line) or ``SIMFORMER_DEBUG=1``.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Annotated

import typer

from simformer_cli import __version__
from simformer_cli.cli import chain, prediction, prepare, results, training
from simformer_cli.cli.options import examples
from simformer_cli.errors import UserError
from simformer_cli.progress import hold_point

app = typer.Typer(
    name="simformer",
    help="Weak-shot semantic segmentation with SimFormer: split, train, infer, pseudolabel, retrain, eval.",
    epilog=examples("simformer pipeline --workdir runs/syn", "simformer split --dataset synthetic --out runs/syn/split.zarr",
                    "simformer train --split runs/syn/split.zarr --help"),
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


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


#: The commands in the order of the chain; each one's examples close its --help.
for _name, _command, _examples in (
    ("split", prepare.split, prepare.SPLIT_EXAMPLES),
    ("train", training.train, training.TRAIN_EXAMPLES),
    ("infer", prediction.infer, prediction.INFER_EXAMPLES),
    ("pseudolabel", prediction.pseudolabel, prediction.PSEUDOLABEL_EXAMPLES),
    ("retrain", training.retrain, training.RETRAIN_EXAMPLES),
    ("pipeline", chain.pipeline, chain.PIPELINE_EXAMPLES),
    ("eval", results.evaluate, results.EVAL_EXAMPLES),
    ("viz", results.viz, results.VIZ_EXAMPLES),
    ("export", results.export, results.EXPORT_EXAMPLES),
    ("schema", prepare.schema, prepare.SCHEMA_EXAMPLES),
):
    app.command(name=_name, epilog=_examples)(_command)


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
