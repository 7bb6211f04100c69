"""pseudolabel and retrain: the labelling rule, quality vs audit labels, refusals, retraining."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from simformer_cli.artifacts.model import ModelManifest
from simformer_cli.artifacts.store import read_manifest
from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.artifacts.pseudolabels import PseudoLabelReader
from simformer_cli.inference.pseudolabel import PseudoLabelRule
from simformer_cli.pipeline.pseudolabel import run_pseudolabel
from simformer_cli.pipeline.retrain import run_retrain
from simformer_cli.pipeline.split import run_split
from simformer_cli.pipeline.train import run_train

from conftest import OneImageSplit, make_folder_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:  # noqa: ANN001
    base = tmp_path_factory.mktemp("pl")
    root = make_folder_dataset(base / "data")
    split = run_split(dataset="folder", root=root, out=base / "split.zarr", novel_classes="car,person", workers=1).path
    model = run_train(split=split, out=base / "model.zarr", iters=1, batch_size=2, device="cpu").path
    return root, split, model


def test_rule_keeps_only_image_level_novel_classes_and_pastes_base(trained) -> None:  # noqa: ANN001
    split = SplitArtifact(trained[1])  # classes 0-5, novel {3 car, 4 person}
    weak = np.array([[0, 255, 255, 255]], dtype=np.uint8)  # pixel 0 is base class 0
    predicted = [3, 3, 4, 5]  # car, car, person (absent from the image), tree (a base class)
    scores = torch.zeros(6, 1, 4)
    for x, c in enumerate(predicted):
        scores[c, 0, x] = 0.9 if x != 1 else 0.3
    rule = PseudoLabelRule(OneImageSplit(split.manifest, weak, present=[0, 3]), min_score=None)
    assert rule(0, scores).tolist() == [[0, 3, 255, 255]]
    strict = PseudoLabelRule(OneImageSplit(split.manifest, weak, present=[0, 3]), min_score=0.5)
    assert strict(0, scores).tolist() == [[0, 255, 255, 255]]
    # among="image": every pixel without base ground truth takes the image's best novel class
    assert PseudoLabelRule(OneImageSplit(split.manifest, weak, present=[0, 3]), None, "image")(0, scores).tolist() == [[0, 3, 3, 3]]
    assert PseudoLabelRule(OneImageSplit(split.manifest, weak, present=[0, 3]), 0.2, "image")(0, scores).tolist() == [[0, 3, 255, 255]]
    assert PseudoLabelRule(OneImageSplit(split.manifest, weak, present=[0, 3, 4]), None, "image")(0, scores).tolist() == [[0, 3, 4, 3]]
    assert PseudoLabelRule(OneImageSplit(split.manifest, weak, present=[0]), None, "image")(0, scores).tolist() == [[0, 255, 255, 255]]


def test_quantile_rule_lets_a_class_that_scores_low_everywhere_take_its_best_pixels(trained) -> None:  # noqa: ANN001
    split = SplitArtifact(trained[1])  # novel {3 car, 4 person}
    weak = np.array([[0, 255, 255, 255]], dtype=np.uint8)
    scores = torch.zeros(6, 1, 4)
    scores[3, 0] = torch.tensor([0.0, 0.90, 0.80, 0.85])  # car: high everywhere
    scores[4, 0] = torch.tensor([0.0, 0.10, 0.40, 0.05])  # person: low, but highest at pixel 2
    fake = OneImageSplit(split.manifest, weak, present=[0, 3, 4])
    assert PseudoLabelRule(fake, None, "image")(0, scores).tolist() == [[0, 3, 3, 3]]
    # Over the training images, car scores 0.7-0.95 and person 0-0.5: at pixel 2, person's 0.40
    # is in its top fifth and car's 0.80 in its lower half.
    quantiles = {3: np.linspace(0.7, 0.95, 11), 4: np.linspace(0.0, 0.5, 11)}
    assert PseudoLabelRule(fake, None, "quantile", quantiles)(0, scores).tolist() == [[0, 3, 4, 3]]
    # min_score still judges the chosen class's own score, not its quantile
    assert PseudoLabelRule(fake, 0.5, "quantile", quantiles)(0, scores).tolist() == [[0, 3, 255, 3]]
    with pytest.raises(ValueError, match="quantiles"):
        PseudoLabelRule(fake, None, "quantile")


def test_class_quantiles_rank_each_class_on_the_images_that_have_it(trained) -> None:  # noqa: ANN001
    from simformer_cli.inference.pseudolabel import QUANTILE_POINTS, class_quantiles
    from simformer_cli.progress import SilentReporter

    split = SplitArtifact(trained[1])
    novel = split.manifest.novel_classes
    seen = []

    def constant(indices, images):  # noqa: ANN001, ANN202  class c scores c / 10 + the image's index / 1000
        seen.extend(indices)
        return [torch.arange(6.0)[:, None, None].expand(6, *image.shape[:2]) / 10 + index / 1000
                for index, image in zip(indices, images)]

    tables = class_quantiles(split, constant, SilentReporter(), batch=2)
    present = split.image_labels("train")
    assert seen == [i for i in range(split.count("train")) if present[i, novel].any()]
    for c in novel:
        having = np.flatnonzero(present[:, c])
        table = tables[c]
        assert len(table) <= QUANTILE_POINTS and np.all(np.diff(table) >= 0)
        assert np.isclose(table[0], c / 10 + having.min() / 1000) and np.isclose(table[-1], c / 10 + having.max() / 1000)


def test_pseudolabel_among_quantile_through_the_cli(cli, trained, tmp_path: Path) -> None:  # noqa: ANN001
    _, split, model = trained
    result = cli("pseudolabel", "--model", model, "--split", split, "--out", tmp_path / "q.zarr", "--among", "quantile",
                 "--device", "cpu", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["params"]["among"] == "quantile"
    artifact, reader = SplitArtifact(split), PseudoLabelReader(tmp_path / "q.zarr")
    for index in range(artifact.count("train")):
        label, weak = reader(index), artifact.label("train", index)
        allowed = set(np.flatnonzero(artifact.image_labels("train")[index])) & {3, 4}
        assert set(np.unique(label[weak == 255])) <= allowed | {255}


def test_pseudolabels_report_quality_and_feed_retraining(cli, trained, tmp_path: Path) -> None:  # noqa: ANN001
    _, split, model = trained
    out = tmp_path / "pl.zarr"
    result = cli("pseudolabel", "--model", model, "--split", split, "--out", out, "--device", "cpu", "--json")
    assert result.code == 0, result.err
    manifest = json.loads(result.out)
    assert manifest["summary"]["novel_miou_vs_audit"] is not None
    artifact = SplitArtifact(split)
    reader = PseudoLabelReader(out)
    for index in range(artifact.count("train")):
        label, weak = reader(index), artifact.label("train", index)
        base = weak != 255
        assert np.array_equal(label[base], weak[base])
        allowed = set(np.flatnonzero(artifact.image_labels("train")[index])) & {3, 4}
        assert set(np.unique(label[~base])) <= allowed | {255}
    count = artifact.count("train")  # the training cache's fill reads a range at once: the same labels
    assert all(np.array_equal(got, PseudoLabelReader(out)(index))
               for index, got in enumerate(PseudoLabelReader(out).read_range(1, count), start=1))
    retrained = cli("retrain", "--split", split, "--pseudolabels", out, "--out", tmp_path / "rt.zarr",
                    "--iters", "1", "--batch-size", "2", "--device", "cpu")
    assert retrained.code == 0, retrained.err
    model_manifest, _ = read_manifest(tmp_path / "rt.zarr", ModelManifest)
    assert model_manifest.stage == "retrain"
    assert set(model_manifest.inputs.artifacts) == {"split", "pseudolabels"}
    assert not model_manifest.params.settings.loss.complementary
    assert "loss_sim" not in model_manifest.summary.final_losses


def test_retrain_refuses_pseudolabels_of_another_split(cli, trained, tmp_path: Path) -> None:  # noqa: ANN001
    root, split, model = trained
    pseudo = run_pseudolabel(model=model, split=split, out=tmp_path / "pl.zarr", device="cpu").path
    other = run_split(dataset="folder", root=root, out=tmp_path / "other.zarr", seed=4, workers=1).path
    result = cli("retrain", "--split", other, "--pseudolabels", pseudo, "--out", tmp_path / "rt.zarr")
    assert result.code == 2 and "another split" in result.err
    wrong = cli("retrain", "--split", split, "--pseudolabels", split, "--out", tmp_path / "rt.zarr")
    assert wrong.code == 2 and "'split' artifact" in wrong.err
    assert not (tmp_path / "rt.zarr").exists()


def test_retrain_init_from_starts_at_the_one_stage_weights(cli, trained, tmp_path: Path) -> None:  # noqa: ANN001
    from safetensors.numpy import load_file

    root, split, model = trained
    pseudo = run_pseudolabel(model=model, split=split, out=tmp_path / "pl.zarr", device="cpu").path
    # With a vanishing lr the weights barely move: the retrained network is the one it started from.
    result = cli("retrain", "--split", split, "--pseudolabels", pseudo, "--init-from", model, "--out", tmp_path / "ft.zarr",
                 "--iters", "1", "--batch-size", "2", "--device", "cpu", "--lr", "1e-12")
    assert result.code == 0, result.err
    start, end = load_file(str(model / "weights.safetensors")), load_file(str(tmp_path / "ft.zarr" / "weights.safetensors"))
    assert start.keys() == end.keys() and all(np.allclose(start[k], end[k], rtol=0, atol=1e-9) for k in start)
    fresh = load_file(str(run_retrain(split=split, pseudolabels=pseudo, out=tmp_path / "fresh.zarr", iters=1,
                                      batch_size=2, device="cpu", lr=1e-12).path / "weights.safetensors"))
    assert not all(np.allclose(start[k], fresh[k], rtol=0, atol=1e-9) for k in start)
    manifest, _ = read_manifest(tmp_path / "ft.zarr", ModelManifest)
    assert set(manifest.inputs.artifacts) == {"split", "pseudolabels", "init"}
    other = run_split(dataset="folder", root=root, out=tmp_path / "other.zarr", seed=4, workers=1).path
    for args, message in [
        (["--init-from", split], "'split' artifact"),
        (["--init-from", model, "--set", "model.num_queries=8"], "network differs"),
        (["--init-from", run_train(split=other, out=tmp_path / "o.zarr", iters=1, batch_size=2, device="cpu").path],
         "trained on another split"),
    ]:
        refused = cli("retrain", "--split", split, "--pseudolabels", pseudo, "--out", tmp_path / "x.zarr",
                      "--iters", "1", "--batch-size", "2", "--device", "cpu", *args)
        assert refused.code == 2 and message in refused.err, refused.err
        assert not (tmp_path / "x.zarr").exists()
