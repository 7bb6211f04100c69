"""Your own data: base classes as masks, the classes you add as tags (``split --tags``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import zarr

from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.data.tags import read_tags
from simformer_cli.pipeline.split import run_split
from simformer_cli.pipeline.train import run_train

from conftest import make_folder_dataset
from own_data import tags_of, to_base_masks, write_tags

NOVEL = ["car", "person"]
#: What the benchmark route and the tags route must store alike (the full train labels aside).
SHARED_ARRAYS = ("train/images", "train/labels", "train/sizes", "train/image_labels",
                 "val/images", "val/labels", "val/sizes", "val/image_labels")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:  # noqa: ANN001
    base = tmp_path_factory.mktemp("own-data")
    full = make_folder_dataset(base / "full")
    own = to_base_masks(full, base / "own", NOVEL)
    return {"base": base, "full": full, "own": own}


def arrays(split: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(split), mode="r")
    return {name: np.asarray(group[name][...]) for name in SHARED_ARRAYS}


@pytest.mark.parametrize("form", ["list", "pairs", "json"])
def test_the_three_tag_file_forms_read_alike(datasets: dict[str, Path], tmp_path: Path, form: str) -> None:
    tags = tags_of(datasets["full"], NOVEL)
    tags[list(tags)[-1]] = []  # an image showing no tagged class
    assert sum(len(names) > 1 for names in tags.values()) >= 1  # and one showing two
    path = write_tags(tmp_path / f"tags.{'json' if form == 'json' else 'csv'}", tags, form)
    parsed = read_tags(path)
    assert parsed.rows == {image: tuple(names) for image, names in tags.items()}
    assert parsed.digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_tags_route_stores_what_the_benchmark_route_stores_and_trains_bit_identically(
        datasets: dict[str, Path], tmp_path: Path) -> None:
    """Done-when: base masks + tags give the benchmark route's weak labels and image-level labels,
    so a few training steps give the same weights, bit for bit, on CPU."""
    tags = write_tags(datasets["own"] / "tags.csv", tags_of(datasets["full"], NOVEL), "list")
    benchmark = run_split(dataset="folder", root=datasets["full"], out=tmp_path / "bench.zarr",
                          novel_classes=",".join(NOVEL), workers=1)
    tagged = run_split(dataset="folder", root=datasets["own"], tags=tags, out=tmp_path / "tags.zarr", workers=1)
    assert tagged.manifest.novel_classes == benchmark.manifest.novel_classes
    assert tagged.manifest.params.selection == "tags" and tagged.manifest.params.requested_novel == NOVEL
    assert tagged.manifest.label_coverage == {"train": "base", "val": "full"}
    expected, got = arrays(benchmark.path), arrays(tagged.path)
    for name in SHARED_ARRAYS:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert got["train/image_labels"][:, benchmark.manifest.novel_classes].any()  # the tags reached the labels
    weights = []
    for split in (benchmark.path, tagged.path):
        model = run_train(split=split, out=split.with_suffix(".model.zarr"), iters=2, batch_size=2, device="cpu",
                          workers=0).path
        weights.append(hashlib.sha256((model / "weights.safetensors").read_bytes()).hexdigest())
    assert weights[0] == weights[1]


def test_provenance_records_the_tag_file_and_its_digest(datasets: dict[str, Path], tmp_path: Path) -> None:
    tags = write_tags(tmp_path / "tags.json", tags_of(datasets["full"], NOVEL), "json")
    split = run_split(dataset="folder", root=datasets["own"], tags=tags, out=tmp_path / "s.zarr", workers=1)
    labels = split.manifest.provenance.labels
    assert labels is not None and labels.novel_labels == "tags"
    assert [(f.role, f.path, f.sha256) for f in labels.files] == [
        ("tags", str(tags.absolute()), hashlib.sha256(tags.read_bytes()).hexdigest())]
    bench = run_split(dataset="folder", root=datasets["full"], novel_classes="car", out=tmp_path / "b.zarr", workers=1)
    assert bench.manifest.provenance.labels.novel_labels == "derived from full masks"
    assert bench.manifest.label_coverage is None
    assert "label_coverage" not in (bench.path / "manifest.json").read_text()  # full-mask splits keep their digest


def test_a_changed_tag_file_rebuilds_the_split(datasets: dict[str, Path], tmp_path: Path) -> None:
    tags = tags_of(datasets["full"], NOVEL)
    path = write_tags(tmp_path / "tags.csv", tags, "list")
    first = run_split(dataset="folder", root=datasets["own"], tags=path, out=tmp_path / "s.zarr", workers=1)
    again = run_split(dataset="folder", root=datasets["own"], tags=path, out=tmp_path / "s.zarr", workers=1)
    assert again.skipped and again.digest == first.digest
    image = next(iter(tags))
    tags[image] = [n for n in NOVEL if n not in tags[image]]
    write_tags(path, tags, "list")
    changed = run_split(dataset="folder", root=datasets["own"], tags=path, out=tmp_path / "s.zarr", workers=1)
    assert not changed.skipped and changed.digest != first.digest


def test_val_tagged_holds_base_masks_and_val_without_masks_holds_none(datasets: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    """Val tagged too: its masks hold base classes only; val without labels/: nothing to score."""
    own = to_base_masks(datasets["full"], tmp_path / "own", NOVEL, subsets=("train", "val"))
    tags = write_tags(tmp_path / "tags.csv", tags_of(datasets["full"], NOVEL, ("train", "val")), "pairs")
    split = run_split(dataset="folder", root=own, tags=tags, out=tmp_path / "s.zarr", workers=1)
    assert split.manifest.label_coverage == {"train": "base", "val": "base"}
    full = SplitArtifact(run_split(dataset="folder", root=datasets["full"], novel_classes=",".join(NOVEL),
                                   out=tmp_path / "b.zarr", workers=1).path)
    tagged = SplitArtifact(split.path)
    np.testing.assert_array_equal(tagged.image_labels("val"), full.image_labels("val"))
    ids = full.manifest.novel_classes
    for index in range(full.count("val")):
        expected = full.label("val", index).copy()
        expected[np.isin(expected, ids)] = full.manifest.ignore_index
        np.testing.assert_array_equal(tagged.label("val", index), expected)

    import shutil
    shutil.rmtree(own / "labels" / "val")
    train_only = write_tags(tmp_path / "train-tags.csv", tags_of(datasets["full"], NOVEL), "list")
    bare = run_split(dataset="folder", root=own, tags=train_only, out=tmp_path / "bare.zarr", workers=1)
    assert bare.manifest.label_coverage == {"train": "base", "val": "none"}
    bare_split = SplitArtifact(bare.path)
    assert (bare_split.label("val", 0) == bare.manifest.ignore_index).all()
    assert not bare_split.image_labels("val").any()


def test_a_training_image_may_show_no_tagged_class(datasets: dict[str, Path], tmp_path: Path) -> None:
    """An empty row says "none of the tagged classes here" (an absent row is refused)."""
    tags = tags_of(datasets["full"], NOVEL)
    image = next(iter(tags))
    tags[image] = []
    own = to_base_masks(datasets["full"], tmp_path / "own", NOVEL)
    for form in ("list", "pairs", "json"):
        path = write_tags(tmp_path / f"tags-{form}.{'json' if form == 'json' else 'csv'}", tags, form)
        split = SplitArtifact(run_split(dataset="folder", root=own, tags=path, out=tmp_path / f"{form}.zarr",
                                        workers=1).path)
        index = split.names("train").index(Path(image).stem)
        assert not split.image_labels("train")[index, split.manifest.novel_classes].any()
