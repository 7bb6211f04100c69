"""How library code reports progress without knowing about terminals.

Stage functions take a :class:`Reporter`; the CLI passes one that draws rich progress bars on
stderr, tests pass :class:`SilentReporter`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
