"""Errors a user can act on.

Anything raised as a :class:`UserError` reaches the user as one line (what is wrong, how to fix it)
and exit status 2; every other exception is a bug and exits 1.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input or usage: reported as one clear line, exit status 2, nothing written."""

    exit_code = 2


class DataError(UserError):
    """A dataset file that cannot be used (corrupt, wrong size, bad label values, missing pair)."""

    def __init__(self, path: Path | str, problem: str, fix: str = "") -> None:
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        message = f"{path}: {problem}"
        if fix:
            message += f"; {fix}"
        super().__init__(message)

    def __reduce__(self) -> tuple[type[DataError], tuple[Path, str, str]]:
        # Errors raised in ingest worker processes travel back to the parent by pickling.
        return (DataError, (self.path, self.problem, self.fix))


class ArtifactError(UserError):
    """A path that is not a usable artifact (missing, half-written, edited, wrong kind, stale)."""
