"""Terminal output: everything human goes to stderr, ``--json`` output alone to stdout."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from simformer_cli.progress import Advance, LogLines, hold_point

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


class RichReporter:
    """Progress on stderr: a bar on a terminal; in a log (stderr not a terminal), a plain line now
    and then (:class:`~simformer_cli.progress.LogLines`), prefixed with ``command``."""

    def __init__(self, command: str = "", console: Console = stderr, clock: Callable[[], float] = time.monotonic) -> None:
        self.command, self.console, self.clock = command, console, clock

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
        terminal = self.console.is_terminal
        lines = None if terminal else LogLines(self.command, description, total, self._plain_line, clock=self.clock)
        with Progress(*columns, console=self.console, disable=not terminal) as progress:
            task_id = progress.add_task(description, total=total, rate="", note="")
            done = [0]

            def advance(steps: int = 1, *, note: str | None = None) -> None:
                progress.advance(task_id, steps)
                speed = progress.tasks[0].speed
                fields = {"rate": f"{speed:.1f}/s"} if speed else {}
                if note is not None:
                    fields["note"] = note
                progress.update(task_id, **fields)
                if lines is not None:
                    lines.advance(steps, note)
                done[0] += steps
                hold_point(description, done[0], done[0] - steps)

            hold_point(description, 0)
            yield advance

    def _plain_line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def info(self, message: str) -> None:
        self.console.print(message)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()
