"""Writing a benchmark's table into its own marked section of BENCHMARKS.md."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import torch


def machine_line() -> str:
    import os

    cores = len(os.sched_getaffinity(0))
    line = f"{platform.processor() or platform.machine()}, {cores} cores, Python {platform.python_version()}, torch {torch.__version__}"
    if torch.cuda.is_available():
        line += f", GPU {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible)"
    return line


def write_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the section between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\nEvery table below was written by the command shown above it.\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def publish(lines: list[str], out: Path | None, name: str) -> None:
    """Print a benchmark's section and, with ``--out``, write it into its place in BENCHMARKS.md."""
    body = "\n".join(lines)
    print(body)
    if out is not None:
        write_section(out, name, body)
