"""``--backbone-weights imagenet``: torchvision's ImageNet ResNets through torch's hub cache.

No test downloads: each points torch's hub at a temporary folder and places a file there, or makes
the download fail as it does offline.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch.hub

from simformer_cli.errors import UserError
from simformer_cli.model.pretrained import IMAGENET_WEIGHTS, cached_path, imagenet_weights
from simformer_cli.pipeline.split import run_split

from conftest import make_folder_dataset


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "hub"
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(folder))
    yield folder
    torch.hub.set_dir(previous)


def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every download fails as it does without a network; returns the URLs asked for."""
    asked: list[str] = []

    def refuse(url: str, *args: object, **kwargs: object) -> None:
        asked.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return asked


@pytest.mark.parametrize(("name", "backbone", "file"), [("imagenet", "resnet50", "resnet50-0676ba61.pth"),
                                                         ("imagenet", "resnet101", "resnet101-63fe2227.pth"),
                                                         ("imagenet-r50", "resnet50", "resnet50-0676ba61.pth")])
def test_a_cached_file_is_used_without_any_download(hub: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                                     backbone: str, file: str) -> None:
    asked = offline(monkeypatch)
    placed = hub / "checkpoints" / file
    placed.parent.mkdir(parents=True)
    placed.write_bytes(b"placed by the test")
    assert imagenet_weights(name, backbone) == placed
    assert asked == []


def test_offline_without_a_cached_file_names_the_cache_path(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = offline(monkeypatch)
    with pytest.raises(UserError) as refused:
        imagenet_weights("imagenet", "resnet50")
    url = IMAGENET_WEIGHTS["imagenet-r50"][1]
    assert asked == [url]
    message = str(refused.value)
    assert str(hub / "checkpoints" / "resnet50-0676ba61.pth") in message and "offline" in message
    assert "\n" not in message


def test_the_published_file_name_carries_the_hash_torch_checks() -> None:
    for backbone, url in IMAGENET_WEIGHTS.values():
        stem = url.rsplit("/", 1)[-1].removesuffix(".pth")
        assert stem.startswith(backbone + "-") and len(stem.split("-")[-1]) == 8
        assert cached_path(url).name == url.rsplit("/", 1)[-1]


@pytest.mark.parametrize(("name", "backbone", "fragment"), [("imagenet-r101", "resnet50", "resnet101 weights"),
                                                             ("imagenet", "tiny", "not for the tiny backbone")])
def test_weights_that_do_not_fit_the_backbone_are_refused(hub: Path, name: str, backbone: str, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        imagenet_weights(name, backbone)


def test_train_reads_the_cached_file(hub: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cli) -> None:  # noqa: ANN001
    """Through the command line: the name resolves to the cached file, which the backbone loader then
    reads (here a placed file that is no state dict, so the one-line refusal names it)."""
    offline(monkeypatch)
    placed = hub / "checkpoints" / "resnet50-0676ba61.pth"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(b"placed by the test")
    split = run_split(dataset="folder", root=make_folder_dataset(tmp_path / "d"), out=tmp_path / "s.zarr",
                      novel_classes="car", workers=1).path
    result = cli("train", "--split", split, "--out", tmp_path / "m.zarr", "--set", "model.backbone=resnet50",
                 "--backbone-weights", "imagenet", "--iters", "1", "--device", "cpu")
    assert result.code == 2, result.err
    assert str(placed) in result.err and "cannot read as a PyTorch state dict" in result.err
    assert len(result.err.strip().splitlines()) == 1 and not (tmp_path / "m.zarr").exists()
