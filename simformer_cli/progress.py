"""How library code reports progress without knowing about terminals.

Stage functions take a :class:`Reporter`; the CLI passes one that draws rich progress bars on
stderr (on a terminal) or writes a plain :class:`LogLines` line now and then (in a log), tests pass
:class:`SilentReporter`.

:func:`hold_point` is a test hook at every step a reporter counts: tests that signal a running
stage make it wait at a named step instead of guessing when it gets there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Protocol

class Advance(Protocol):
    def __call__(self, steps: int = 1, *, note: str | None = None) -> None:
        """Move ``steps`` forward; ``note`` replaces the short status shown beside the bar."""
        ...


class Reporter(Protocol):
    def task(self, description: str, total: int) -> contextlib.AbstractContextManager[Advance]:
        """A unit of long work with ``total`` steps; the yielded callable advances it."""
        ...

    def info(self, message: str) -> None:
        """One line for the human reading stderr."""
        ...


class SilentReporter:
    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        yield lambda steps=1, *, note=None: None

    def info(self, message: str) -> None:
        return None


def duration(seconds: float) -> str:
    """``41 s``, ``12 min 5 s``, ``3 h 20 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class LogLines:
    """Progress of one task as plain lines, for a log (stderr not a terminal, so no bar).

    The first line comes once ``first_after`` seconds have passed (a log shows soon that work goes
    on, and at what pace); later lines only when both ``every`` seconds and ``share`` of the work
    have passed since the previous one (whichever is rarer: a long task writes about ten, a quick
    one none). Nothing is written when the task completes: the stage then says what it made.
    """

    def __init__(self, prefix: str, description: str, total: int, write: Callable[[str], None], *,
                 clock: Callable[[], float] = time.monotonic, first_after: float = 10.0, every: float = 30.0,
                 share: float = 0.1) -> None:
        self.label = f"{prefix}: {description}" if prefix else description
        self.total, self.write, self.clock = total, write, clock
        self.first_after, self.every, self.share = first_after, every, share
        self.began = clock()
        self.done = 0
        self.last: tuple[float, int] | None = None  # (time, done) of the last line written

    def advance(self, steps: int = 1, note: str | None = None) -> None:
        self.done += steps
        if self.total <= 0 or self.done >= self.total:
            return
        now = self.clock()
        if self.last is None:
            due = now - self.began >= self.first_after
        else:
            due = now - self.last[0] >= self.every and self.done - self.last[1] >= self.share * self.total
        if due:
            self.last = (now, self.done)
            self.write(self.line(now, note))

    def line(self, now: float, note: str | None = None) -> str:
        elapsed = now - self.began
        left = elapsed / self.done * (self.total - self.done) if self.done else None
        text = (f"{self.label} {self.done}/{self.total} ({100 * self.done // self.total}%), "
                f"{duration(elapsed)} elapsed" + (f", ~{duration(left)} left" if left is not None else ""))
        return f"{text}, {note}" if note else text


# ---------------------------------------------------------------- test hook

#: ``DESCRIPTION@N`` items separated by ``;`` (e.g. ``training@2``): when the task of that
#: description has finished N steps (0: when it starts), the process writes ``hold: training@2`` on
#: stderr and waits until it gets SIGUSR1 (go on) or any other signal (Ctrl-C, SIGTERM, SIGKILL),
#: so a test can signal a stage at a known point, however slow or loaded the machine is.
HOLD_ENV = "SIMFORMER_TEST_HOLD"
#: Seconds a hold waits before it gives up with an error (a test that never signals fails, not hangs).
HOLD_TIMEOUT_ENV = "SIMFORMER_TEST_HOLD_TIMEOUT"


def hold_point(description: str, done: int, before: int | None = None) -> None:
    """Wait here if ``SIMFORMER_TEST_HOLD`` names a step of this task in ``(before, done]`` (a task
    may advance several steps at once), or ``done`` itself; a no-op otherwise (the usual case)."""
    wanted = os.environ.get(HOLD_ENV)
    if not wanted:
        return
    low = done - 1 if before is None else before
    steps = [int(n) for name, _, n in (item.strip().rpartition("@") for item in wanted.split(";"))
             if name == description and n.isdigit() and low < int(n) <= done]
    if not steps:
        return
    point = f"{description}@{steps[0]}"
    released = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: released.append(signum))
    try:
        sys.stderr.write(f"hold: {point}\n")
        sys.stderr.flush()
        give_up = time.monotonic() + float(os.environ.get(HOLD_TIMEOUT_ENV, "600"))
        while not released:  # a signal interrupts the sleep at once; its handler runs here
            if time.monotonic() > give_up:
                raise RuntimeError(f"{HOLD_ENV}: nothing released the hold at {point}")
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGUSR1, previous)
