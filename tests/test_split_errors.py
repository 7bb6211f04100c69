"""Bad input to `simformer split`: one clear line, exit 2, no traceback, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_folder_dataset


def assert_refused(result, out: Path, *fragments: str) -> None:
    assert result.code == 2, (result.code, result.err)
    lines = [line for line in result.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in result.err, result.err
    assert not out.exists()
    assert not any(p.name.startswith(f".{out.name}.staging") for p in out.parent.iterdir()) if out.parent.exists() else True


def split_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["split", "--dataset", "folder", "--root", str(root), "--out", str(out), "--workers", "1", *extra]


def test_missing_root(cli, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    assert_refused(cli(*split_args(tmp_path / "nope", out)), out, "not found")


def test_missing_root_ade20k(cli, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    result = cli("split", "--dataset", "ade20k", "--root", tmp_path / "nope", "--out", out)
    assert_refused(result, out)


@pytest.mark.parametrize("ratio", ["3:0", "0:1", "a:b", "-1:3", "3", "3:1:1", ""])
def test_bad_ratio(cli, folder_dataset: Path, tmp_path: Path, ratio: str) -> None:
    out = tmp_path / "s.zarr"
    assert_refused(cli(*split_args(folder_dataset, out, "--ratio", ratio)), out, "--ratio")


def test_official_split_out_of_range(cli, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    result = cli("split", "--dataset", "ade20k", "--root", tmp_path, "--official-split", "9", "--out", out)
    assert_refused(result, out, "9")


def test_unknown_class_name(cli, folder_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    assert_refused(cli(*split_args(folder_dataset, out, "--novel-classes", "car,unicorn")), out, "unicorn")


def test_two_selections(cli, folder_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    assert_refused(cli(*split_args(folder_dataset, out, "--ratio", "3:1", "--novel-classes", "car")), out)


def test_corrupt_image(cli, folder_dataset: Path, tmp_path: Path) -> None:
    bad = folder_dataset / "images" / "train" / "img001.png"
    bad.write_bytes(b"this is not a png")
    out = tmp_path / "s.zarr"
    assert_refused(cli(*split_args(folder_dataset, out)), out, "img001.png")


def test_truncated_jpeg(cli, tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "d", jpeg=True, sizes={"train": [(64, 64), (64, 64)], "val": [(64, 64)]})
    bad = root / "images" / "train" / "img001.jpg"
    bad.write_bytes(bad.read_bytes()[:-200])
    out = tmp_path / "s.zarr"
    assert_refused(cli(*split_args(root, out)), out, "img001.jpg")


def test_label_out_of_range(cli, folder_dataset: Path, tmp_path: Path) -> None:
    path = folder_dataset / "labels" / "val" / "img000.png"
    label = np.asarray(Image.open(path)).copy()
    label[0, 0] = 77
    Image.fromarray(label).save(path)
    out = tmp_path / "s.zarr"
    assert_refused(cli(*split_args(folder_dataset, out)), out, "img000.png", "77")


def test_label_size_mismatch(cli, folder_dataset: Path, tmp_path: Path) -> None:
    path = folder_dataset / "labels" / "train" / "img002.png"
    Image.fromarray(np.zeros((5, 7), dtype=np.uint8)).save(path)
    out = tmp_path / "s.zarr"
    assert_refused(cli(*split_args(folder_dataset, out)), out, "img002.png", "7x5")


def test_sixteen_bit_label(cli, folder_dataset: Path, tmp_path: Path) -> None:
    path = folder_dataset / "labels" / "train" / "img000.png"
    label = np.asarray(Image.open(path)).astype(np.uint16)
    Image.fromarray(label).save(path)
    out = tmp_path / "s.zarr"
    assert_refused(cli(*split_args(folder_dataset, out)), out, "16-bit")


def test_image_without_label(cli, folder_dataset: Path, tmp_path: Path) -> None:
    (folder_dataset / "labels" / "val" / "img001.png").unlink()
    out = tmp_path / "s.zarr"
    assert_refused(cli(*split_args(folder_dataset, out)), out, "img001")


def test_empty_subset(cli, folder_dataset: Path, tmp_path: Path) -> None:
    for path in (folder_dataset / "images" / "val").iterdir():
        path.unlink()
    for path in (folder_dataset / "labels" / "val").iterdir():
        path.unlink()
    out = tmp_path / "s.zarr"
    assert_refused(cli(*split_args(folder_dataset, out)), out, "no images")


def test_bad_classes_json(cli, folder_dataset: Path, tmp_path: Path) -> None:
    (folder_dataset / "classes.json").write_text(json.dumps({"classes": ["only-one"]}))
    out = tmp_path / "s.zarr"
    assert_refused(cli(*split_args(folder_dataset, out)), out, "classes.json")


def test_output_exists_and_is_not_an_artifact(cli, folder_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = cli(*split_args(folder_dataset, out))
    assert result.code == 2 and "not a simformer artifact" in result.err
    assert (out / "notes.txt").read_text() == "keep me"


def test_failed_rebuild_keeps_the_old_artifact(cli, folder_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    assert cli(*split_args(folder_dataset, out)).code == 0
    before = (out / "manifest.json").read_bytes()
    (folder_dataset / "images" / "train" / "img000.png").write_bytes(b"broken")
    result = cli(*split_args(folder_dataset, out, "--force"))
    assert result.code == 2
    assert (out / "manifest.json").read_bytes() == before
