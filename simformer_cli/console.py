"""Terminal output: everything human goes to stderr, ``--json`` output alone to stdout."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from simformer_cli.progress import Advance

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


class RichReporter:
    """Progress bars and info lines on stderr."""

    def __init__(self, console: Console = stderr) -> None:
        self.console = console

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        # Bars only on a terminal: logs of scripted runs stay readable, and an error stays one line.
        with Progress(*columns, console=self.console, disable=not self.console.is_terminal) as progress:
            task_id = progress.add_task(description, total=total, rate="", note="")

            def advance(steps: int = 1, *, note: str | None = None) -> None:
                progress.advance(task_id, steps)
                speed = progress.tasks[0].speed
                fields = {"rate": f"{speed:.1f}/s"} if speed else {}
                if note is not None:
                    fields["note"] = note
                progress.update(task_id, **fields)

            yield advance

    def info(self, message: str) -> None:
        self.console.print(message)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()
