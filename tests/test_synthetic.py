"""The built-in synthetic dataset: layout, byte-stable output, labels, class statistics, preview."""

from __future__ import annotations

import io
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from simformer_cli.data.folder import load_folder
from simformer_cli.data.png import encode_png
from simformer_cli.data.synthetic import (
    COLOURS,
    GENERATOR_VERSION,
    IGNORE_INDEX,
    TEXTURES,
    class_appearances,
    generate_synthetic,
    render_sample,
)
from simformer_cli.errors import UserError
from simformer_cli.settings.synthetic import MAX_CLASSES, SyntheticSettings

SMALL = SyntheticSettings(train_images=60, val_images=20, test_images=12, image_size=64)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "data"
    generate_synthetic(out, SMALL, workers=0)
    return out


@pytest.fixture(scope="module")
def samples() -> list[tuple[np.ndarray, np.ndarray]]:
    """300 training scenes of the default settings, rendered in memory."""
    settings = SyntheticSettings(train_images=300)
    looks = class_appearances(settings.num_classes)
    return [render_sample(settings, 0, i, looks) for i in range(settings.train_images)]


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_folder_layout(small_dataset: Path) -> None:
    classes = json.loads((small_dataset / "classes.json").read_text())
    assert classes["ignore_index"] == 255
    assert classes["always_base"] == ["background"]  # a random split never makes background novel
    names = classes["classes"]
    assert len(names) == 16 and names[0] == "background" and len(set(names)) == 16
    assert all(n == n.lower() and "," not in n and " " not in n for n in names)
    for subset, count in (("train", 60), ("val", 20), ("test", 12)):
        images = sorted(p.name for p in (small_dataset / "images" / subset).iterdir())
        labels = sorted(p.name for p in (small_dataset / "labels" / subset).iterdir())
        assert images == labels == [f"{i:06d}.png" for i in range(count)]
    with Image.open(small_dataset / "images" / "train" / "000007.png") as image:
        assert (image.mode, image.size) == ("RGB", (64, 64))
    with Image.open(small_dataset / "labels" / "val" / "000019.png") as label:
        assert (label.mode, label.size) == ("L", (64, 64))
    raw = load_folder(small_dataset)  # the documented folder reader takes it as it is
    assert raw.class_names == tuple(names) and {k: len(v) for k, v in raw.subsets.items()} == {"train": 60, "val": 20,
                                                                                            "test": 12}
    described = json.loads((small_dataset / "synthetic.json").read_text())
    assert described["generator_version"] == GENERATOR_VERSION
    assert SyntheticSettings(**described["settings"]) == SMALL


def test_same_settings_same_bytes_whatever_the_workers(small_dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    finished: list[int] = []
    generate_synthetic(again, SMALL, progress=finished.append, workers=2)
    assert all_files(again) == all_files(small_dataset)
    assert finished == sorted(finished) and finished[-1] == 92


def test_test_images_are_their_own_and_do_not_move_with_the_other_subsets(small_dataset: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    generate_synthetic(other, SyntheticSettings(train_images=7, val_images=3, test_images=12, image_size=64), workers=0)
    files = all_files(small_dataset)
    test_files = {name: data for name, data in all_files(other).items() if "/test/" in name}
    assert len(test_files) == 24 and all(files[name] == data for name, data in test_files.items())
    train_and_val = {data for name, data in files.items() if name.startswith("images/") and "/test/" not in name}
    assert not train_and_val & set(test_files.values())
    none = tmp_path / "none"
    generate_synthetic(none, SyntheticSettings(train_images=4, val_images=2, test_images=0, image_size=64), workers=0)
    assert sorted(p.name for p in (none / "images").iterdir()) == ["train", "val"]


def test_other_seed_other_bytes(small_dataset: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    generate_synthetic(other, SMALL.model_copy(update={"seed": 1}), workers=0)
    first, second = all_files(small_dataset), all_files(other)
    assert first.keys() == second.keys()
    differing = [name for name in first if name.endswith(".png") and first[name] != second[name]]
    assert len(differing) == 184  # (60 + 20 + 12) images and labels


def test_labels_are_class_ids_or_ignore_and_mostly_labelled(small_dataset: Path) -> None:
    labels = np.stack([np.asarray(Image.open(p)) for p in sorted((small_dataset / "labels").rglob("*.png"))])
    values = set(np.unique(labels).tolist())
    assert values <= set(range(16)) | {IGNORE_INDEX}
    assert IGNORE_INDEX in values
    labelled = np.mean(labels != IGNORE_INDEX)
    assert 0.9 < labelled < 0.995
    per_image = np.mean(labels != IGNORE_INDEX, axis=(1, 2))
    assert per_image.min() > 0.85


def test_no_unlabelled_pixels_when_the_fraction_is_zero() -> None:
    settings = SMALL.model_copy(update={"unlabelled_fraction": 0.0})
    looks = class_appearances(16)
    for i in range(10):
        _, label = render_sample(settings, 0, i, looks)
        assert IGNORE_INDEX not in label


def test_every_class_is_frequent_and_none_dominates(samples: list[tuple[np.ndarray, np.ndarray]]) -> None:
    present = [set(np.unique(label).tolist()) - {IGNORE_INDEX} for _, label in samples]
    images_with = Counter(c for classes in present for c in classes)
    assert set(images_with) == set(range(16))
    foreground = [images_with[c] for c in range(1, 16)]
    assert min(foreground) >= 0.10 * len(samples)
    assert max(foreground) <= 2 * min(foreground)
    # classes mostly appear together with other (foreground) classes, as in real scenes
    assert np.mean([len(classes - {0}) >= 2 for classes in present]) > 0.7
    pixels = np.bincount(np.concatenate([label.ravel() for _, label in samples]), minlength=256)[1:16]
    assert pixels.max() <= 2.5 * pixels.min()


def region_features(image: np.ndarray, label: np.ndarray) -> dict[int, np.ndarray]:
    """Per class in one image: mean RGB, luminance std, mean gradient, gradient coherence."""
    size = label.shape[0]
    padded = np.pad(label, 1, mode="edge")
    interior = np.ones(label.shape, dtype=bool)
    for dy, dx in itertools.product(range(3), range(3)):
        interior &= padded[dy : dy + size, dx : dx + size] == label
    luminance = image.astype(float).mean(axis=2)
    gy, gx = np.gradient(luminance)
    features = {}
    for class_id in set(np.unique(label).tolist()) - {IGNORE_INDEX}:
        where = interior & (label == class_id)
        if where.sum() < 100:
            continue
        jxx, jyy, jxy = (gx[where] ** 2).mean(), (gy[where] ** 2).mean(), (gx[where] * gy[where]).mean()
        coherence = np.hypot(jxx - jyy, 2 * jxy) / (jxx + jyy)
        gradient = np.hypot(gx[where], gy[where]).mean()
        features[class_id] = np.array([*image[where].mean(axis=0), luminance[where].std(), gradient, coherence])
    return features


def test_classes_look_different(samples: list[tuple[np.ndarray, np.ndarray]]) -> None:
    rows = [(c, f) for image, label in samples for c, f in region_features(image, label).items()]
    classes = np.array([c for c, _ in rows])
    features = np.array([f for _, f in rows])
    assert set(classes.tolist()) == set(range(16))
    means = np.array([features[classes == c].mean(axis=0) for c in range(16)])
    spreads = np.array([features[classes == c].std(axis=0) for c in range(16)])
    for a, b in itertools.combinations(range(16), 2):
        # some feature tells the two classes' regions apart by well over their spreads
        separation = np.abs(means[a] - means[b]) / (spreads[a] + spreads[b])
        assert separation.max() > 1.5, (a, b, separation)
    # and six crude numbers per region already name its class almost always
    scale = features.std(axis=0)
    distances = (((features[:, None, :] - means[None]) / scale) ** 2).sum(axis=2)
    assert np.mean(distances.argmin(axis=1) == classes) > 0.95


def test_factors_are_shared_but_no_two_classes_look_alike() -> None:
    looks = class_appearances(16)
    colours = Counter(look.colour for look in looks)
    textures = Counter(look.texture for look in looks)
    assert sorted(colours.values()) == sorted(textures.values()) == [4] * 4
    assert Counter(look.scale for look in looks) == {"coarse": 8, "fine": 8}
    assert len({(look.colour, look.texture) for look in looks}) == 16
    for num_classes in range(2, 73):
        looks = class_appearances(num_classes)
        assert len({(look.colour, look.texture, look.scale) for look in looks}) == num_classes
        assert len({look.name for look in looks}) == num_classes


@pytest.mark.parametrize("shape", [(1, 1), (5, 300), (70, 33, 3), (40, 64), (9, 9, 3)])
def test_png_encoder_round_trips(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape) * 1000 + shape[0])
    noisy = rng.integers(0, 256, shape, dtype=np.uint8)
    runs = np.repeat(rng.integers(0, 3, (shape[0], 1, *shape[2:]), dtype=np.uint8), shape[1], axis=1)
    for array in (noisy, runs, np.zeros(shape, dtype=np.uint8)):
        with Image.open(io.BytesIO(encode_png(array))) as decoded:
            assert np.array_equal(np.asarray(decoded), array)


def test_settings_are_strict() -> None:
    with pytest.raises(ValidationError):
        SyntheticSettings(num_clases=8)
    with pytest.raises(ValidationError):
        SyntheticSettings(min_regions=5, max_regions=3)
    with pytest.raises(ValidationError):
        SyntheticSettings(num_classes=1)
    with pytest.raises(ValidationError):
        SMALL.seed = 3  # type: ignore[misc]


def test_refuses_a_folder_with_files(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        generate_synthetic(tmp_path, SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_classes_with_a_set_presence_appear_in_that_share_of_images() -> None:
    """Co-occurrence: listed classes appear in about their share of images, the rest as before."""
    from simformer_cli.data.synthetic import parse_presence

    presence = parse_presence("3=0.92,7=0.92,red-dots-coarse=0.5")
    settings = SyntheticSettings(train_images=400, image_size=64, class_presence=presence)
    looks = class_appearances(settings.num_classes)
    seen = np.zeros(settings.num_classes)
    for index in range(settings.train_images):
        seen[np.unique(render_sample(settings, 0, index, looks)[1])[:-1].clip(max=15)] += 1
    share = seen / settings.train_images
    assert len(presence) == 3 and presence[3] == presence[7] == 0.92
    for class_id, wanted in presence.items():
        assert wanted - 0.08 <= share[class_id] <= wanted + 0.03, (class_id, share[class_id])
    unlisted = [c for c in range(1, 16) if c not in presence]
    assert 0.08 < share[unlisted].mean() < 0.25  # the others share the remaining regions
    for bad in ("3", "3=1.5", "nope=0.5", "0=0.5"):
        with pytest.raises((UserError, ValidationError)):
            SyntheticSettings(class_presence=parse_presence(bad))


def test_no_presence_setting_leaves_the_bytes_as_they_were() -> None:
    plain = SyntheticSettings(train_images=3, image_size=64)
    looks = class_appearances(16)
    assert plain.class_presence == {}
    first = render_sample(plain, 0, 2, looks)
    again = render_sample(SyntheticSettings(train_images=3, image_size=64, class_presence={}), 0, 2, looks)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_the_settings_bound_on_classes_is_what_the_generator_can_draw() -> None:
    assert MAX_CLASSES == len(COLOURS) * len(TEXTURES)
    assert len({(a.colour, a.texture) for a in class_appearances(MAX_CLASSES)}) == MAX_CLASSES
