"""The bad-input catalogue's machinery, shared by every ``test_bad_inputs*.py`` file.

Every case gets exit 2, one line on stderr (what is wrong and how to fix it), no traceback, nothing
on stdout, nothing written and no existing file touched. Each case also checks that its message is
the one in ``docs/bad_inputs.md``; after changing or adding a message, regenerate the table with
``SIMFORMER_WRITE_BAD_INPUTS_DOC=1 python -m pytest tests/test_bad_inputs*.py`` (rows of cases that
were not run are kept as they are).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from simformer_cli.artifacts.digest import manifest_digest

from conftest import make_folder_dataset

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "bad_inputs.md"
WRITE_DOC = os.environ.get("SIMFORMER_WRITE_BAD_INPUTS_DOC") == "1"
CAPTURED: dict[str, tuple[str, str]] = {}  # case -> (what is wrong, message)


def tree_state(*roots: Path) -> dict[str, tuple]:
    """Every path under the roots with its size, mtime and content digest (lock files aside; folders only
    by name, as creating and removing a lock file or a staging folder inside one changes its mtime)."""
    state: dict[str, tuple] = {}
    for root in roots:
        if not root.exists():
            continue
        for path in [root, *root.rglob("*")]:
            if path.name.endswith(".lock"):
                continue
            if path.is_dir() and not path.is_symlink():
                state[str(path)] = ("folder",)
                continue
            info = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else ""
            state[str(path)] = (info.st_size, info.st_mtime_ns, digest)
    return state


def doc_cell(message: str) -> str:
    """The message as a Markdown code span inside a table cell."""
    text = message.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def normalise(message: str, places: dict[str, str]) -> str:
    for path, name in sorted(places.items(), key=lambda item: -len(item[0])):
        message = message.replace(path, name)
    return message


class Refusals:
    """Runs a case and checks the whole contract; records the message for docs/bad_inputs.md."""

    def __init__(self, cli, roots: list[Path], places: dict[str, str]) -> None:  # noqa: ANN001
        self.cli, self.roots, self.places = cli, roots, places

    def check(self, case: str, what: str, args: list, *fragments: str) -> str:
        before = tree_state(*self.roots)
        result = self.cli(*args)
        return self.verify(case, what, result.code, result.out, result.err, before, *fragments)

    def verify(self, case: str, what: str, code: int, out: str, err: str, before: dict, *fragments: str,
               after_warnings: bool = False) -> str:
        """``after_warnings``: a failure once the work has begun may follow the stage's own warnings."""
        assert code == 2, (code, err)
        lines = [line for line in err.splitlines() if line.strip()]
        if after_warnings:
            assert all(line.startswith("warning: ") for line in lines[:-1]), err
            lines = lines[-1:]
        assert len(lines) == 1, err
        line = lines[0]
        assert line.startswith("error: ") and "Traceback" not in err, err
        for fragment in fragments:
            assert fragment in line, (fragment, line)
        assert out == ""
        after = tree_state(*self.roots)
        assert after == before, sorted(set(after.items()) ^ set(before.items()))[:6]
        message = normalise(line, self.places)
        CAPTURED[case] = (what, message)
        if not WRITE_DOC and DOC.exists():
            assert doc_cell(message) in DOC.read_text(encoding="utf-8"), (
                f"{case}: message not in {DOC.name}; rerun with SIMFORMER_WRITE_BAD_INPUTS_DOC=1 to update it: {message}")
        return line


MARKER = "<!-- generated:test_bad_inputs -->"


def write_doc() -> None:
    """Merge the messages captured in this session into the generated table of docs/bad_inputs.md."""
    if not (WRITE_DOC and CAPTURED):
        return
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else MARKER + "\n" + MARKER + "\n"
    head, _, rest = text.partition(MARKER)
    old_table, _, tail = rest.partition(MARKER)
    rows = {}
    for line in old_table.splitlines():
        cells = line.split(" | ", 1)
        if line.startswith("| ") and not line.startswith(("| case |", "|---")):
            rows[cells[0].removeprefix("| ").strip()] = line
    rows.update({case: f"| {case} | {what} | {doc_cell(message)} |" for case, (what, message) in CAPTURED.items()})
    table = "| case | what is wrong | the one line on stderr (exit status 2) |\n|---|---|---|\n"
    table += "".join(rows[case] + "\n" for case in sorted(rows))
    DOC.write_text(f"{head}{MARKER}\n{table}{MARKER}{tail}", encoding="utf-8")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):  # noqa: ANN001, ANN201
    """Dataset, split, a one-step model, predictions (split and folder), pseudo labels, another split."""
    from simformer_cli.pipeline.infer import run_infer
    from simformer_cli.pipeline.pseudolabel import run_pseudolabel
    from simformer_cli.pipeline.split import run_split
    from simformer_cli.pipeline.train import run_train

    base = tmp_path_factory.mktemp("bad-inputs")
    data = make_folder_dataset(base / "data")
    split = run_split(dataset="folder", root=data, out=base / "split.zarr", novel_classes="car,person", workers=1).path
    other = run_split(dataset="folder", root=data, out=base / "other-split.zarr", seed=5, workers=1).path
    model = run_train(split=split, out=base / "model.zarr", iters=1, batch_size=2, device="cpu").path
    predictions = run_infer(model=model, split=split, out=base / "pred.zarr", device="cpu").path
    photos = base / "photos"
    shutil.copytree(data / "images" / "val", photos)
    photo_predictions = run_infer(model=model, images=photos, out=base / "pred-photos.zarr", device="cpu").path
    pseudo = run_pseudolabel(model=model, split=split, out=base / "pseudo.zarr", device="cpu").path
    return dict(base=base, data=data, split=split, other=other, model=model, predictions=predictions,
                photos=photos, photo_predictions=photo_predictions, pseudo=pseudo)


@pytest.fixture
def refusals(cli, shared, tmp_path: Path) -> Refusals:  # noqa: ANN001
    return Refusals(cli, [shared["base"], tmp_path], {str(shared["base"]): "DATA", str(tmp_path): "TMP"})


def copy_artifact(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def edit_manifest(path: Path, change, *, keep_digest_valid: bool) -> None:  # noqa: ANN001
    document = json.loads((path / "manifest.json").read_text())
    change(document["manifest"])
    if keep_digest_valid:
        document["digest"] = manifest_digest(document["manifest"])
    (path / "manifest.json").write_text(json.dumps(document))


def split_args(root: Path, out: Path, *extra: str) -> list:
    return ["split", "--dataset", "folder", "--root", root, "--out", out, "--workers", "1", *extra]


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and header claiming a huge image, with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


