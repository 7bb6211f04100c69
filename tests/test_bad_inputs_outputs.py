"""Bad-input cases of what ``export`` and ``viz`` write, and of how images are read.

``export`` and ``viz`` never overwrite a file simformer did not write and never leave a half-written
one; a read-only folder or a full disk is one line. Images are read as users' cameras wrote them:
EXIF orientation applied, 16-bit greyscale scaled to 8 bits. The refusals land in the generated
table of ``docs/bad_inputs.md`` (machinery: ``refusals.py``; regenerate with
``SIMFORMER_WRITE_BAD_INPUTS_DOC=1 python -m pytest tests/test_bad_inputs_outputs.py``).
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.artifacts.predictions import PredictionsArtifact
from simformer_cli.artifacts import outputs
from simformer_cli.data.images import FolderImages

from conftest import make_folder_dataset
from refusals import Refusals, refusals, shared, split_args, tree_state  # noqa: F401 - fixtures
from test_bad_inputs import needs_mounts, run_in_namespace


def export_args(predictions: Path, format: str, out: Path) -> list:
    return ["export", "--predictions", predictions, "--format", format, "--out", out]


def viz_args(shared: dict, out: Path, *extra: str) -> list:  # noqa: ANN001
    return ["viz", "--predictions", shared["predictions"], "--split", shared["split"], "--out", out, *extra]


# ---------------------------------------------------------------- export --format coco


def test_export_coco_over_a_file_it_did_not_write(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    (tmp_path / "results.json").write_text('{"annotations": ["months of work"]}')
    refusals.check("export-coco-overwrites-a-file", "`export --format coco --out` names an existing file that is not "
                   "a COCO export of simformer", export_args(shared["predictions"], "coco", tmp_path / "results.json"),
                   "refusing to overwrite")


def test_export_coco_over_a_link(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    (tmp_path / "elsewhere.json").write_text("{}")
    (tmp_path / "results.json").symlink_to(tmp_path / "elsewhere.json")
    refusals.check("export-coco-out-is-a-link", "`export --format coco --out` names a symbolic link",
                   export_args(shared["predictions"], "coco", tmp_path / "results.json"), "symbolic link")


def test_export_coco_into_an_artifact(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    refusals.check("export-coco-into-an-artifact", "`export --format coco --out` names an artifact's `manifest.json`",
                   export_args(shared["predictions"], "coco", shared["predictions"] / "manifest.json"),
                   "inside the simformer artifact")


def test_export_coco_replaces_only_its_own_export(cli, shared, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "deeper" / "results.json"
    for _ in range(2):  # a new file (and folders), then a rerun over its own earlier export
        result = cli(*export_args(shared["predictions"], "coco", out))
        assert result.code == 0 and result.out == "", result.err
    document = json.loads(out.read_text())
    assert list(document) == ["info", "categories", "annotations"]
    assert document["info"]["predictions"] == PredictionsArtifact(shared["predictions"]).digest
    other = cli(*export_args(shared["photo_predictions"], "coco", out))  # other predictions, same file: fine
    assert other.code == 0, other.err
    assert sorted(p.name for p in out.parent.iterdir()) == ["results.json"]  # no .tmp left


# ---------------------------------------------------------------- export --format png and viz: folders


def test_export_png_into_a_folder_of_other_files(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "labels"
    out.mkdir()
    (out / "img000.png").write_bytes(b"a label someone drew by hand")
    (out / "notes.txt").write_text("mine")
    refusals.check("export-png-into-a-folder-of-other-files", "`export --format png --out` names a folder holding "
                   "other files", export_args(shared["predictions"], "png", out), "refusing to overwrite")


def test_export_png_into_an_artifact(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    refusals.check("export-png-into-an-artifact", "`export --format png --out` names a folder inside an artifact",
                   export_args(shared["predictions"], "png", shared["predictions"] / "labels"),
                   "inside the simformer artifact")


def test_export_png_over_an_edited_export(refusals: Refusals, cli, shared, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "labels"
    assert cli(*export_args(shared["predictions"], "png", out)).code == 0
    first = sorted(out.glob("*.png"))[0]
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(first)  # a label corrected by hand
    refusals.check("export-png-over-an-edited-export", "`export --format png` into its own earlier export in which "
                   "a file was changed since", export_args(shared["predictions"], "png", out), "was changed")


def test_export_png_into_viz_overlays(refusals: Refusals, cli, shared, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "pictures"
    assert cli(*viz_args(shared, out)).code == 0
    refusals.check("export-png-into-viz-overlays", "`export --format png --out` names a folder of `viz` overlays",
                   export_args(shared["predictions"], "png", out), "not simformer's own PNG export")


def test_export_png_replaces_only_its_own_export(cli, shared, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "labels"
    out.mkdir()  # an empty folder is fine
    for predictions in (shared["predictions"], shared["predictions"], shared["photo_predictions"]):
        result = cli(*export_args(predictions, "png", out))
        assert result.code == 0 and result.out == "", result.err
    artifact = PredictionsArtifact(shared["photo_predictions"])
    names = artifact.names()
    assert sorted(p.name for p in out.iterdir()) == sorted([".simformer.json", *(f"{n}.png" for n in names)])
    for index, name in enumerate(names):
        assert np.array_equal(np.asarray(Image.open(out / f"{name}.png")), artifact.label(index))
    marker = json.loads((out / ".simformer.json").read_text())
    assert marker["kind"] == "export-png" and marker["source"] == artifact.digest
    assert sorted(p.name for p in tmp_path.iterdir()) == [".labels.lock", "labels"]  # no staging folder left


def test_viz_out_is_a_file(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    (tmp_path / "overlay.png").write_bytes(b"not ours")
    refusals.check("viz-out-is-a-file", "`viz --out` names an existing file",
                   viz_args(shared, tmp_path / "overlay.png"), "not a folder")


def test_viz_into_a_folder_of_other_files(refusals: Refusals, shared, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "viz"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"a photo")
    refusals.check("viz-into-a-folder-of-other-files", "`viz --out` names a folder holding other files",
                   viz_args(shared, out), "refusing to overwrite")


def test_viz_replaces_only_its_own_overlays(cli, shared, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "viz"
    for limit, count in (("2", 2), ("1", 1)):  # the second run leaves no stale overlay of the first
        result = cli(*viz_args(shared, out, "--limit", limit))
        assert result.code == 0 and result.out == "", result.err
        assert len(list(out.glob("*.png"))) == count
    assert json.loads((out / ".simformer.json").read_text())["kind"] == "viz"


# ---------------------------------------------------------------- read-only folder, full disk


@needs_mounts
@pytest.mark.parametrize(("case", "command"), [("viz-read-only", "viz"), ("export-read-only", "export")])
def test_read_only_output_folder(refusals: Refusals, shared, tmp_path: Path, case: str, command: str) -> None:  # noqa: ANN001
    target = tmp_path / "ro"
    target.mkdir()
    args = viz_args(shared, target / "viz") if command == "viz" else export_args(shared["predictions"], "png",
                                                                                 target / "labels")
    before = tree_state(*refusals.roots)
    done = run_in_namespace(f"mount --bind '{target}' '{target}'; mount -o remount,ro,bind '{target}'", args)
    refusals.verify(case, f"`{command} --out` in a read-only folder (a read-only bind mount)", done.returncode,
                    done.stdout, done.stderr, before, "not writable")


@needs_mounts
@pytest.mark.parametrize(("case", "command"), [("viz-disk-full", "viz"), ("export-disk-full", "export")])
def test_full_disk_in_a_small_tmpfs(refusals: Refusals, shared, tmp_path: Path, case: str, command: str) -> None:  # noqa: ANN001
    """A real full disk: a one-page tmpfs; the first PNG fits, the next does not. Nothing may be left."""
    target = tmp_path / "small"
    target.mkdir()
    args = viz_args(shared, target / "viz") if command == "viz" else export_args(shared["predictions"], "png",
                                                                                 target / "labels")
    before = tree_state(*refusals.roots)
    done = run_in_namespace(f"mount -t tmpfs -o size=4k none '{target}'", args, after=f"ls -A '{target}'")
    left = [name for name in done.stdout.split() if not name.endswith(".lock")]
    assert left == [], (left, done.stderr)
    refusals.verify(case, f"disk full while `{command}` writes (a 4k tmpfs)", done.returncode, "", done.stderr,
                    before, "disk full")


class FillingFile:
    """A file whose next write stores half of its bytes and then finds the disk full."""

    def __init__(self, handle) -> None:  # noqa: ANN001
        self.handle = handle

    def __enter__(self) -> FillingFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.handle.close()

    def write(self, data: bytes) -> int:
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.handle, name)


def fill_disk_after(monkeypatch, files: int) -> None:  # noqa: ANN001
    """Every file ``outputs`` writes after the first ``files`` ones hits a full disk half-way."""
    written = {"n": 0}

    def fake_open(path, mode="r", *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        handle = builtins.open(path, mode, *args, **kwargs)
        if "b" in mode and ("w" in mode or "x" in mode):
            written["n"] += 1
            if written["n"] > files:
                return FillingFile(handle)
        return handle

    monkeypatch.setattr(outputs, "open", fake_open, raising=False)


@pytest.mark.parametrize(("case", "args", "files"), [
    ("viz-disk-full-simulated", "viz", 1),
    ("export-disk-full-simulated", "png", 1),
    ("export-coco-disk-full-simulated", "coco", 0),
])
def test_full_disk_simulated(refusals: Refusals, shared, tmp_path: Path, monkeypatch, case: str, args: str,
                             files: int) -> None:  # noqa: ANN001
    """The same without mount rights: a write finds the disk full half-way through a file."""
    fill_disk_after(monkeypatch, files)
    out = tmp_path / {"coco": "results.json", "png": "labels", "viz": "viz"}[args]
    command = viz_args(shared, out) if args == "viz" else export_args(shared["predictions"], args, out)
    what = "`viz`" if args == "viz" else f"`export --format {args}`"
    refusals.check(case, f"disk full half-way through a file {what} writes (simulated ENOSPC)", command, "disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], [f".{out.name}.lock"])


def test_full_disk_keeps_an_earlier_export_whole(cli, shared, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    out = tmp_path / "labels"
    assert cli(*export_args(shared["predictions"], "png", out)).code == 0
    before = tree_state(out)
    fill_disk_after(monkeypatch, 1)
    result = cli(*export_args(shared["photo_predictions"], "png", out))
    assert result.code == 2 and "disk full" in result.err
    assert tree_state(out) == before


# ---------------------------------------------------------------- images as cameras write them


def gradient_16bit(height: int, width: int) -> np.ndarray:
    """Every 16-bit grey level from 0 to 65535, spread over the image."""
    return np.linspace(0, 65535, height * width).round().astype(np.uint16).reshape(height, width)


def save_jpeg_with_orientation(path: Path, pixels: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, format="JPEG", quality=95, exif=exif.tobytes())


def upright(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def test_sixteen_bit_images_keep_their_range(cli, shared, tmp_path: Path) -> None:  # noqa: ANN001
    """A real 16-bit grey PNG (mode I;16) becomes its top 8 bits in split, infer --images and viz."""
    root = make_folder_dataset(tmp_path / "d")
    grey = gradient_16bit(16, 16)
    path = root / "images" / "train" / "img002.png"  # a 16x16 image in the dataset
    Image.fromarray(grey).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"
    expected = np.repeat((grey >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    assert expected.min() == 0 and expected.max() == 255
    split = tmp_path / "s.zarr"
    assert cli(*split_args(root, split)).code == 0
    assert np.array_equal(SplitArtifact(split).image("train", 2), expected)

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(path, photos / "grey.png")
    assert np.array_equal(FolderImages(photos).image(0), expected)
    predictions = tmp_path / "p.zarr"
    assert cli("infer", "--model", shared["model"], "--images", photos, "--out", predictions,
               "--device", "cpu").code == 0
    assert PredictionsArtifact(predictions).label(0).shape == (16, 16)
    result = cli("viz", "--predictions", predictions, "--images", photos, "--out", tmp_path / "viz")
    assert result.code == 0, result.err
    overlay = np.asarray(Image.open(tmp_path / "viz" / "grey.png").convert("RGB"))
    image_panel = _first_panel(overlay, 256)  # 16 px enlarged to viz's 256-px minimum height
    assert abs(float(image_panel.mean()) - float(expected.mean())) < 8  # a clipped image would be ~255


def _first_panel(overlay: np.ndarray, side: int) -> np.ndarray:
    """The image panel of a triptych: the top-left ``side`` x ``side`` block under the title row."""
    from simformer_cli.evaluation.visualize import TEXT_ROW

    return overlay[TEXT_ROW + 6 : TEXT_ROW + 6 + side, :side]


def test_exif_orientation_is_applied(cli, shared, tmp_path: Path) -> None:  # noqa: ANN001
    """A phone photo stored as 16 wide x 8 high, tagged "turn 90 degrees": it is 8 wide x 16 high, as displayed."""
    root = make_folder_dataset(tmp_path / "d")
    rng = np.random.default_rng(3)
    stored = rng.integers(0, 255, (8, 16, 3)).astype(np.uint8)
    (root / "images" / "train" / "img002.png").unlink()
    image_path = root / "images" / "train" / "img002.jpg"
    save_jpeg_with_orientation(image_path, stored, 6)
    shown = upright(image_path)
    assert shown.shape == (16, 8, 3)
    label = np.zeros((16, 8), np.uint8)
    label[:8] = 2
    Image.fromarray(label).save(root / "labels" / "train" / "img002.png")  # the size of the displayed image
    split = tmp_path / "s.zarr"
    result = cli(*split_args(root, split))
    assert result.code == 0, result.err
    artifact = SplitArtifact(split)
    assert artifact.sizes("train")[2].tolist() == [16, 8]
    assert np.array_equal(artifact.image("train", 2), shown)

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(image_path, photos / "phone.jpg")
    predictions = tmp_path / "p.zarr"
    assert cli("infer", "--model", shared["model"], "--images", photos, "--out", predictions,
               "--device", "cpu").code == 0
    assert PredictionsArtifact(predictions).label(0).shape == (16, 8)
    assert np.array_equal(FolderImages(photos).image(0), shown)
    assert cli("viz", "--predictions", predictions, "--images", photos, "--out", tmp_path / "viz").code == 0


def test_label_of_the_unrotated_image(refusals: Refusals, tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "d")
    (root / "images" / "train" / "img002.png").unlink()
    save_jpeg_with_orientation(root / "images" / "train" / "img002.jpg", np.zeros((8, 16, 3), np.uint8), 6)
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(root / "labels" / "train" / "img002.png")  # as stored
    refusals.check("label-size-of-the-unrotated-image", "a label of a photo's stored size, where the photo's EXIF "
                   "orientation turns it upright", split_args(root, tmp_path / "s.zarr"), "16x8", "8x16", "EXIF")


# ---------------------------------------------------------------- class choices that cannot work


def test_novel_class_without_training_pixels_warns(cli, tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "d")
    for path in (root / "labels" / "train").glob("*.png"):
        label = np.asarray(Image.open(path)).copy()
        label[label == 4] = 0  # no person in any training image
        Image.fromarray(label).save(path)
    result = cli(*split_args(root, tmp_path / "s.zarr", "--novel-classes", "car,person"))
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "person" in warnings[0] and "car" not in warnings[0], result.err
    assert "cannot learn it from image-level labels" in warnings[0]
    assert SplitArtifact(tmp_path / "s.zarr").manifest.novel_classes == [3, 4]
