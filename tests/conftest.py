"""Shared fixtures: tiny datasets built on the fly, and a way to run the CLI in-process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from PIL import Image

from simformer_cli.cli import run

# A suite started in the background by a script (`make test &`, nohup, a CI runner) inherits SIGINT
# ignored, and so would every stage the tests start, which then cannot be interrupted as a terminal's
# Ctrl-C would: give this process (and so its children) SIGINT as a terminal gives it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Whether the machine looks busy must not change what a test sees (tests of the warning turn it on).
os.environ["SIMFORMER_BUSY_WARNING"] = "0"

# No property test may fail for being slow: on a loaded machine an example can take longer than
# hypothesis's default 200 ms deadline, and drawing data can trip its too_slow health check.
settings.register_profile("simformer", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("simformer")

CLASS_NAMES = ["background", "sky", "road", "car", "person", "tree"]


class OnTrainingStep:
    """A reporter that calls ``fn(steps done)`` after every training step: how a test stops a run
    (an exception raised by ``fn``) at a known step."""

    def __init__(self, fn: Callable[[int], None]) -> None:
        self.fn = fn

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        done = [0]

        def advance(steps: int = 1, *, note: str | None = None) -> None:
            done[0] += steps
            if description == "training":
                self.fn(done[0])

        yield advance

    def info(self, message: str) -> None:
        return None


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run ``simformer ARGS`` in-process; returns exit code, stdout and stderr."""

    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        code = run([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def label_map(rng: np.random.Generator, height: int, width: int, num_classes: int) -> np.ndarray:
    """Blocky label map with a few classes and an unlabelled stripe."""
    label = np.zeros((height, width), dtype=np.uint8)
    for class_id in rng.choice(np.arange(1, num_classes), size=3, replace=False):
        y, x = rng.integers(0, height // 2), rng.integers(0, width // 2)
        label[y : y + height // 2, x : x + width // 2] = class_id
    label[:, width // 2] = 255
    return label


class OneImageSplit:
    """What the pseudo-label rule reads of a split, for one hand-built image: the manifest, the
    image-level label (``present``: its classes) and the weak train label."""

    def __init__(self, manifest, weak: np.ndarray, present: list[int]) -> None:  # noqa: ANN001
        self.manifest = manifest
        self._weak = weak
        self._labels = np.zeros((1, len(manifest.class_names)), dtype=bool)
        self._labels[0, present] = True

    def image_labels(self, subset: str) -> np.ndarray:
        return self._labels

    def label(self, subset: str, index: int) -> np.ndarray:
        return self._weak


def two_class_groups() -> tuple[np.ndarray, np.ndarray]:
    """Hand-built groups of open pixels in eight images: (groups, images) pixel counts and
    (images, classes) image labels. Class 0 is in the first six images, class 1 in images 2-7;
    group 0 covers class 0's pixels, group 1 class 1's, group 2 is in every image."""
    present = np.zeros((8, 2), dtype=bool)
    present[:6, 0] = True
    present[2:, 1] = True
    mass = np.zeros((3, 8))
    mass[0, :6] = 50
    mass[1, 2:] = 50
    mass[2, :] = 50
    return mass, present


def make_folder_dataset(
    root: Path, *, sizes: dict[str, list[tuple[int, int]]] | None = None, seed: int = 0, jpeg: bool = False
) -> Path:
    """A small dataset in the documented folder format, images of mixed sizes."""
    rng = np.random.default_rng(seed)
    sizes = sizes or {"train": [(24, 32), (30, 20), (16, 16), (40, 28)], "val": [(20, 36), (32, 32)]}
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps({"classes": CLASS_NAMES, "always_base": ["background"]}))
    for subset, shapes in sizes.items():
        for i, (h, w) in enumerate(shapes):
            label = label_map(rng, h, w, len(CLASS_NAMES))
            image = (rng.integers(0, 255, (h, w, 3))).astype(np.uint8)
            suffix = ".jpg" if jpeg else ".png"
            write_png(root / "images" / subset / f"img{i:03d}{suffix}", image)
            write_png(root / "labels" / subset / f"img{i:03d}.png", label)
    return root


def relist_files(artifact: Path) -> None:
    """After a test rewrote an artifact's arrays in place: its manifest lists the files as they are now
    (digest valid), as if its stage had written them; opening it would otherwise refuse them."""
    from simformer_cli.artifacts.digest import manifest_digest
    from simformer_cli.artifacts.inventory import take_inventory

    document = json.loads((artifact / "manifest.json").read_text())
    document["manifest"]["files"] = take_inventory(artifact)
    document["digest"] = manifest_digest(document["manifest"])
    (artifact / "manifest.json").write_text(json.dumps(document))


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    return make_folder_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def synthetic_split(tmp_path_factory) -> Path:  # noqa: ANN001
    """A small synthetic split (48 train / 12 val images of 64x64), made once per test session."""
    from simformer_cli.settings.synthetic import SyntheticSettings
    from simformer_cli.pipeline.split import run_split

    out = tmp_path_factory.mktemp("synthetic") / "split.zarr"
    settings = SyntheticSettings(train_images=48, val_images=12, image_size=64)
    run_split(dataset="synthetic", out=out, synthetic=settings, workers=1)
    return out


@pytest.fixture(scope="session", autouse=True)
def _bad_inputs_doc():  # noqa: ANN202
    """With SIMFORMER_WRITE_BAD_INPUTS_DOC=1, write the messages the bad-input cases captured."""
    yield
    from refusals import write_doc

    write_doc()
