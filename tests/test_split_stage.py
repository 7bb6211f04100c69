"""The split stage end to end on a tiny folder dataset: contents, determinism, skipping, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simformer_cli.artifacts.layout import read_files
from simformer_cli.artifacts.store import read_manifest
from simformer_cli.artifacts.split import SplitManifest
from simformer_cli.artifacts.split import SplitArtifact, read_audit_label
from simformer_cli.pipeline.split import run_split

from conftest import CLASS_NAMES, make_folder_dataset


def tree_bytes(path: Path) -> dict[str, bytes]:
    """Every file of an artifact except the manifest (whose created_at differs between runs)."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def test_split_contents_round_trip_at_original_resolution(folder_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "split.zarr"
    result = run_split(dataset="folder", root=folder_dataset, out=out, novel_classes="car,person", workers=1)
    manifest = result.manifest
    assert manifest.novel_classes == [3, 4]
    assert manifest.base_classes == [0, 1, 2, 5]
    assert manifest.class_names == CLASS_NAMES
    split = SplitArtifact(out)
    for subset in ("train", "val"):
        names = split.names(subset)
        assert split.count(subset) == len(names)
        for i, name in enumerate(names):
            image = np.asarray(Image.open(folder_dataset / "images" / subset / f"{name}.png"))
            full = np.asarray(Image.open(folder_dataset / "labels" / subset / f"{name}.png"))
            assert np.array_equal(split.image(subset, i), image)
            stored = split.label(subset, i)
            assert stored.shape == full.shape
            if subset == "val":
                assert np.array_equal(stored, full)
            else:
                expected = full.copy()
                expected[np.isin(full, [3, 4])] = 255
                assert np.array_equal(stored, expected)
                assert np.array_equal(read_audit_label(split, i), full)
            present = [c for c in range(len(CLASS_NAMES)) if (full == c).any()]
            assert np.flatnonzero(split.image_labels(subset)[i]).tolist() == present
        # Bulk reads (training's cache fill) cut each image of a mixed-size range to its own size.
        images, labels = split.read_range(subset, 1, split.count(subset), labels=True)
        for i, (image, label) in enumerate(zip(images, labels), start=1):
            assert np.array_equal(image, split.image(subset, i)) and np.array_equal(label, split.label(subset, i))


def test_same_inputs_same_bytes_and_digest(folder_dataset: Path, tmp_path: Path) -> None:
    first = run_split(dataset="folder", root=folder_dataset, out=tmp_path / "a.zarr", seed=3, workers=1)
    second = run_split(dataset="folder", root=folder_dataset, out=tmp_path / "b.zarr", seed=3, workers=2)
    assert first.digest == second.digest
    assert tree_bytes(tmp_path / "a.zarr") == tree_bytes(tmp_path / "b.zarr")


def test_rerun_skips_and_changed_file_rebuilds(folder_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "split.zarr"
    first = run_split(dataset="folder", root=folder_dataset, out=out, workers=1)
    again = run_split(dataset="folder", root=folder_dataset, out=out, workers=1)
    assert again.skipped and again.digest == first.digest
    label_path = folder_dataset / "labels" / "train" / "img000.png"
    label = np.asarray(Image.open(label_path)).copy()
    label[0, 0] = 5 if label[0, 0] != 5 else 1
    Image.fromarray(label).save(label_path)
    changed = run_split(dataset="folder", root=folder_dataset, out=out, workers=1)
    assert not changed.skipped and changed.digest != first.digest
    assert read_manifest(out, SplitManifest)[1] == changed.digest


def test_ratio_split_never_draws_always_base(folder_dataset: Path, tmp_path: Path) -> None:
    for seed in range(8):
        result = run_split(dataset="folder", root=folder_dataset, out=tmp_path / f"s{seed}.zarr",
                           ratio="1:1", seed=seed, workers=1)
        assert 0 not in result.manifest.novel_classes
        assert len(result.manifest.novel_classes) == 3


def test_summary_shares_add_up(folder_dataset: Path, tmp_path: Path) -> None:
    manifest = run_split(dataset="folder", root=folder_dataset, out=tmp_path / "s.zarr", workers=1).manifest
    for info in manifest.summary.subsets.values():
        assert abs(info.base_share + info.novel_share + info.ignore_share - 1) < 1e-4
        assert info.ignore_share > 0
    assert sum(manifest.summary.train_images_per_class) > 0


def test_cli_json_prints_only_the_manifest(cli, folder_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "split.zarr"
    result = cli("split", "--dataset", "folder", "--root", folder_dataset, "--novel-classes", "3,tree",
                 "--out", out, "--workers", "1", "--json")
    assert result.code == 0, result.err
    manifest = json.loads(result.out)
    assert manifest["kind"] == "split"
    assert manifest["novel_classes"] == [3, 5]
    assert "novel: car, tree" in result.err


def test_mixed_sizes_jpeg_dataset(tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "jpg", jpeg=True,
                               sizes={"train": [(50, 70), (64, 33)], "val": [(17, 90)]})
    split = SplitArtifact(run_split(dataset="folder", root=root, out=tmp_path / "s.zarr", workers=1).path)
    assert split.sizes("train").tolist() == [[50, 70], [64, 33]]
    assert split.image("val", 0).shape == (17, 90, 3)


def jpeg_split(tmp_path: Path) -> tuple[Path, Path]:
    """A split of JPEG training images (one padded with NUL bytes after its end) and a PNG val image."""
    root = make_folder_dataset(tmp_path / "jpg", jpeg=True, sizes={"train": [(50, 70), (64, 33)], "val": [(17, 90)]})
    padded = root / "images" / "train" / "img001.jpg"
    padded.write_bytes(padded.read_bytes() + b"\0\0\0")  # some cameras pad their files with NUL bytes
    Image.fromarray(np.full((17, 90, 3), 7, np.uint8)).save(root / "images" / "val" / "img000.png")
    (root / "images" / "val" / "img000.jpg").unlink()
    return root, run_split(dataset="folder", root=root, out=tmp_path / "s.zarr", workers=1).path


def test_jpeg_images_are_kept_as_their_files(tmp_path: Path) -> None:
    """A JPEG is stored as its file, byte for byte (trailing bytes after its end too), and reads back
    as the pixels Pillow decodes from it, taking the room of its file, not of its pixels; a PNG is
    stored as its pixels."""
    root, out = jpeg_split(tmp_path)
    split = SplitArtifact(out)
    assert split.kept_as_file("train").tolist() == [True, True] and split.kept_as_file("val").tolist() == [False]
    paths = {subset: [next((root / "images" / subset).glob(f"{name}.*")) for name in split.names(subset)]
             for subset in ("train", "val")}
    assert read_files(split._array("train/image_files"), 0, 2) == [path.read_bytes() for path in paths["train"]]
    for subset in ("train", "val"):
        for index, path in enumerate(paths[subset]):
            assert np.array_equal(split.image(subset, index), np.asarray(Image.open(path).convert("RGB")))
        images, _ = split.read_range(subset, 0, len(paths[subset]), labels=False)
        assert all(np.array_equal(image, split.image(subset, i)) for i, image in enumerate(images))
    stored = sum(p.stat().st_size for p in (out / "train" / "image_files" / "c").rglob("*") if p.is_file())
    source = sum(path.stat().st_size for path in paths["train"])
    # per file 12 bytes (item count, length, crc32c), per shard its index (16 bytes a place, a crc32c)
    assert source < stored <= source + 12 * 2 + 16 * split.images_per_shard("train") + 4
    assert not (out / "train" / "images" / "c").exists()  # no pixels stored for the JPEG images
    assert not (out / "val" / "image_files" / "c").exists()


def test_damaged_or_differently_decoded_jpeg_files_are_refused(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """A kept file's bytes carry a crc32c like every chunk; and the pixels a decoder gives must match
    the crc32 taken at ingest, or the split is refused (another Pillow or libjpeg build would do
    this; here one least significant bit is changed after decoding)."""
    import simformer_cli.artifacts.split as split_module
    from simformer_cli.errors import ArtifactError

    _, out = jpeg_split(tmp_path)
    decode = split_module.decode_image_oriented

    def another_decoder(path: Path, data: bytes) -> tuple[np.ndarray, int]:
        image, orientation = decode(path, data)
        image = image.copy()
        image[0, 0, 0] ^= 1
        return image, orientation

    with monkeypatch.context() as patch:
        patch.setattr(split_module, "decode_image_oriented", another_decoder)
        for read in (lambda s: s.image("train", 0), lambda s: s.read_many("train", [0, 1], labels=True),
                     lambda s: s.read_range("train", 0, 2, labels=False)):
            with pytest.raises(ArtifactError, match="image 'img000' of 'train' decodes to other pixels here") as error:
                read(SplitArtifact(out))
            assert "rebuild the split on this machine" in str(error.value) and "\n" not in str(error.value)
    shard = next(p for p in (out / "train" / "image_files" / "c").rglob("*") if p.is_file())
    data = bytearray(shard.read_bytes())
    data[40] ^= 0x10  # inside the first JPEG's header
    shard.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="array 'train/image_files', file c/0 fails its checksum"):
        SplitArtifact(out).image("train", 0)


def test_official_splits_through_the_cli(cli, tmp_path: Path) -> None:
    from test_datasets_real_formats import make_ade, make_coco_converted, make_coco_release

    from simformer_cli.data.official_splits import official_novel_classes

    ade_root = tmp_path / "ade"
    make_ade(ade_root, "release")
    result = cli("split", "--dataset", "ade20k", "--root", ade_root, "--official-split", "1",
                 "--out", tmp_path / "ade.zarr", "--workers", "1", "--json")
    assert result.code == 0, result.err
    manifest = json.loads(result.out)
    assert manifest["novel_classes"] == list(official_novel_classes("ade20k", 1))
    assert len(manifest["class_names"]) == 150 and manifest["class_names"][1] == "building"
    for make in (make_coco_converted, make_coco_release):
        root = tmp_path / make.__name__
        make(root)
        result = cli("split", "--dataset", "coco-stuff-10k", "--root", root, "--official-split", "3",
                     "--out", tmp_path / f"{make.__name__}.zarr", "--workers", "1", "--json")
        assert result.code == 0, result.err
        manifest = json.loads(result.out)
        assert manifest["novel_classes"] == list(official_novel_classes("coco-stuff-10k", 3))
        assert len(manifest["class_names"]) == 171


def test_default_root_from_environment(cli, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from test_datasets_real_formats import make_ade

    make_ade(tmp_path / "envroot", "release")
    monkeypatch.setenv("SIMFORMER_DATASETS", str(tmp_path / "envroot"))
    monkeypatch.chdir(tmp_path)
    result = cli("split", "--dataset", "ade20k", "--ratio", "3:1", "--seed", "2", "--workers", "1", "--json")
    assert result.code == 0, result.err
    assert (tmp_path / "runs" / "ade20k-r3-1-s2" / "split.zarr" / "manifest.json").is_file()
    assert len(json.loads(result.out)["novel_classes"]) == 38


def test_a_test_subset_and_held_out_training_images(cli, tmp_path: Path) -> None:
    """A folder dataset's images/test become the test subset; --holdout moves training images, chosen
    by name whatever the class split, to a holdout subset with full labels; both can be segmented
    and scored like val."""
    sizes = {"train": [(24, 32), (30, 20), (16, 16), (40, 28), (20, 20), (24, 24)], "val": [(20, 36), (32, 32)],
             "test": [(28, 28), (16, 24), (20, 20)]}
    root = make_folder_dataset(tmp_path / "d", sizes=sizes)
    held = {}
    for seed in (0, 3):
        out = tmp_path / f"s{seed}.zarr"
        assert cli("split", "--dataset", "folder", "--root", root, "--seed", seed, "--holdout", "2", "--out", out,
                   "--workers", "1").code == 0
        split = SplitArtifact(out)
        counts = {name: subset.images for name, subset in split.manifest.summary.subsets.items()}
        assert counts == {"train": 4, "val": 2, "test": 3, "holdout": 2}
        assert split.manifest.params.holdout == 2
        held[seed] = split.names("holdout")
        assert not set(held[seed]) & set(split.names("train"))
        for index in range(2):  # full labels, novel pixels included, as the dataset has them
            name = held[seed][index]
            expected = np.asarray(Image.open(root / "labels" / "train" / f"{name}.png"))
            assert np.array_equal(split.label("holdout", index), expected)
    assert held[0] == held[3]
    out = tmp_path / "s0.zarr"
    model, predictions = tmp_path / "m.zarr", tmp_path / "p.zarr"
    assert cli("train", "--split", out, "--out", model, "--iters", "1", "--batch-size", "2", "--device", "cpu").code == 0
    for subset in ("test", "holdout"):
        assert cli("infer", "--model", model, "--split", out, "--subset", subset, "--out", predictions,
                   "--device", "cpu").code == 0
        result = cli("eval", "--predictions", predictions, "--split", out, "--json")
        assert result.code == 0 and json.loads(result.out)["num_images"] == {"test": 3, "holdout": 2}[subset]
    refused = cli("split", "--dataset", "folder", "--root", root, "--holdout", "5", "--out", tmp_path / "x.zarr")
    assert refused.code == 2 and "--holdout 5" in refused.err and len(refused.err.strip().splitlines()) == 1


def test_a_synthetic_split_generates_in_a_folder_of_its_own_and_clears_those_of_dead_splits(tmp_path: Path) -> None:
    import subprocess
    import sys

    from simformer_cli.settings.synthetic import SyntheticSettings

    out = tmp_path / "split.zarr"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        # A split generating beside this one (another live process) and one killed outright.
        (tmp_path / f".split.zarr.synthetic-source-{live.pid}" / "images").mkdir(parents=True)
        (tmp_path / f".split.zarr.synthetic-source-{dead.pid}" / "images").mkdir(parents=True)
        run_split(dataset="synthetic", out=out, synthetic=SyntheticSettings(train_images=8, val_images=4, image_size=32),
                  workers=1)
        left = sorted(path.name for path in tmp_path.iterdir() if "synthetic-source" in path.name)
        assert left == [f".split.zarr.synthetic-source-{live.pid}"]  # the live one's work is not touched
        assert (out / "manifest.json").is_file()
    finally:
        live.kill()
        live.wait()
