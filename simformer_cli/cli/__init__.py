"""The ``simformer`` command line: parsing only; every command calls one ``run_<stage>`` of ``pipeline``.

``app`` wires the commands (``prepare``, ``training``, ``prediction``, ``results``, ``chain``), whose
shared options and checks are ``options``; ``console`` and ``report`` write to the terminal.
"""

from simformer_cli.cli.app import app, main, run

__all__ = ["app", "main", "run"]
