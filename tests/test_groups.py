"""pseudolabel --among groups: k-means groups of the open pixels named by image counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from simformer_cli.artifacts.pseudolabels import PseudoLabelReader
from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.devices import start_runtime
from simformer_cli.inference.groups import GroupNaming, appearances, group_evidence, kmeans, name_groups
from simformer_cli.inference.pseudolabel import PseudoLabelRule
from simformer_cli.pipeline.split import run_split
from simformer_cli.pipeline.stage import load_model
from simformer_cli.pipeline.train import run_train
from simformer_cli.progress import SilentReporter
from simformer_cli.settings import test_time as views

from conftest import OneImageSplit, make_folder_dataset, two_class_groups


def test_a_group_never_seen_without_its_class_has_evidence_for_it_and_one_seen_everywhere_against() -> None:
    mass, present = two_class_groups()
    evidence = group_evidence(appearances(mass, 0.02), present)
    assert evidence[0, 0] > 0 and evidence[1, 1] > 0
    assert evidence[0, 1] < 0 and evidence[1, 0] < 0  # seen in images lacking the other class
    assert evidence[2, 0] < 0 and evidence[2, 1] < 0  # seen in every image, whatever the label


def test_a_group_below_the_appearance_share_does_not_count_as_seen() -> None:
    mass, present = two_class_groups()
    mass[0, 6:] = 1  # a stray pixel or two of group 0 in the images without class 0
    strict = group_evidence(appearances(mass, 0.02), present)
    loose = group_evidence(appearances(mass, 0.005), present)
    assert strict[0, 0] > 0 > loose[0, 0]


def test_a_class_in_every_image_gets_no_evidence_either_way() -> None:
    mass, present = two_class_groups()
    present[:, 0] = True
    assert np.all(group_evidence(appearances(mass, 0.02), present)[:, 0] == 0)


def test_kmeans_finds_two_clear_directions_the_same_way_every_time() -> None:
    rng = np.random.default_rng(0)
    a = torch.nn.functional.normalize(torch.tensor([1.0, 0, 0]) + 0.05 * torch.from_numpy(rng.normal(size=(40, 3))).float(), dim=1)
    b = torch.nn.functional.normalize(torch.tensor([0, 1.0, 0]) + 0.05 * torch.from_numpy(rng.normal(size=(40, 3))).float(), dim=1)
    pool = torch.cat([a, b])
    centers = kmeans(pool, 2)
    assert torch.equal(centers, kmeans(pool, 2))
    nearest = (pool @ centers.T).argmax(1)
    assert len(set(nearest[:40].tolist())) == 1 and len(set(nearest[40:].tolist())) == 1
    assert nearest[0] != nearest[40]
    assert torch.allclose(centers.norm(dim=1), torch.ones(2))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:  # noqa: ANN001
    base = tmp_path_factory.mktemp("groups")
    root = make_folder_dataset(base / "data")
    split = run_split(dataset="folder", root=root, out=base / "split.zarr", novel_classes="car,person", workers=1).path
    model = run_train(split=split, out=base / "model.zarr", iters=1, batch_size=2, device="cpu").path
    return split, model


def test_rule_names_each_pixel_after_its_groups_evidence_not_its_scores(trained) -> None:  # noqa: ANN001
    split, _ = trained
    manifest = SplitArtifact(split).manifest  # novel classes 3 (car) and 4 (person)
    weak = np.array([[0, 255, 255, 255]], dtype=np.uint8)
    # Groups: 0 is car, 1 is person, 2 has no evidence either way; the grid is the image (1 x 4).
    naming = GroupNaming(novel_classes=[3, 4], maps=[np.array([[1, 0, 1, 2]], dtype=np.uint8)],
                         evidence=np.array([[5.0, -5.0], [-5.0, 5.0], [0.0, 0.0]]),
                         share=np.full(3, 1 / 3), seen_in=np.ones(3, dtype=int))
    scores = torch.zeros(len(manifest.class_names), 1, 4)
    scores[3] = torch.tensor([0.9, 0.1, 0.9, 0.2])  # the scores say car, car, car, person
    scores[4] = torch.tensor([0.1, 0.9, 0.1, 0.6])
    rule = PseudoLabelRule(OneImageSplit(manifest, weak, [3, 4]), None, "groups", groups=naming)
    assert rule(0, scores).tolist() == [[0, 3, 4, 4]]  # base kept; groups decide; the tie by score
    # only the image's own novel classes: without person every open pixel is car
    only_car = PseudoLabelRule(OneImageSplit(manifest, weak, [3]), None, "groups", groups=naming)
    assert only_car(0, scores).tolist() == [[0, 3, 3, 3]]
    # min_score judges the chosen class's score
    strict = PseudoLabelRule(OneImageSplit(manifest, weak, [3, 4]), 0.5, "groups", groups=naming)
    assert strict(0, scores).tolist() == [[0, 255, 255, 4]]
    with pytest.raises(ValueError, match="groups"):
        PseudoLabelRule(OneImageSplit(manifest, weak, [3]), None, "groups")
    # unnamed="ignore": group 2 has no positive evidence for car or person, so its pixel stays open;
    # with only car in the label, the person group (car -5) goes too
    sure = PseudoLabelRule(OneImageSplit(manifest, weak, [3, 4]), None, "groups", groups=naming, unnamed="ignore")
    assert sure(0, scores).tolist() == [[0, 3, 4, 255]]
    sure_car = PseudoLabelRule(OneImageSplit(manifest, weak, [3]), None, "groups", groups=naming, unnamed="ignore")
    assert sure_car(0, scores).tolist() == [[0, 3, 255, 255]]


def test_name_groups_covers_every_training_image_on_its_feature_grid(trained) -> None:  # noqa: ANN001
    split, model = trained
    artifact = SplitArtifact(split)
    network, manifest, _ = load_model(model)
    test_time = views.TestTimeSettings.from_training(manifest.params.settings.augment, (1.0,), False)
    naming = name_groups(artifact, network, test_time, start_runtime("cpu"), SilentReporter(), groups=3, appears=0.1)
    assert len(naming.maps) == artifact.count("train")
    assert naming.evidence.shape == (3, 2) and np.isclose(naming.share.sum(), 1)
    for index, grid in enumerate(naming.maps):
        h, w = artifact.sizes("train")[index]
        vh, vw = test_time.view_size(int(h), int(w))
        assert grid.shape == (-(-vh // 4), -(-vw // 4)) and grid.max() < 3
        assert naming.pixel_evidence(index, np.array([4, 3]), (int(h), int(w))).shape == (2, h, w)


def test_pseudolabel_among_groups_through_the_cli(cli, trained, tmp_path: Path) -> None:  # noqa: ANN001
    split, model = trained
    result = cli("pseudolabel", "--model", model, "--split", split, "--out", tmp_path / "g.zarr", "--among", "groups",
                 "--groups", "3", "--appears", "0.2", "--device", "cpu", "--json")
    assert result.code == 0, result.err
    params = json.loads(result.out)["params"]
    assert (params["among"], params["groups"], params["appears"]) == ("groups", 3, 0.2)
    assert "most like" in result.err  # the groups and their names are reported
    assert "unnamed" not in params  # the default (name) keeps the stamp artifacts made before it had
    artifact, reader = SplitArtifact(split), PseudoLabelReader(tmp_path / "g.zarr")
    for index in range(artifact.count("train")):
        label, weak = reader(index), artifact.label("train", index)
        allowed = set(np.flatnonzero(artifact.image_labels("train")[index])) & {3, 4}
        open_pixels = weak == 255
        assert set(np.unique(label[open_pixels])) <= allowed | {255}
        assert np.array_equal(label[~open_pixels], weak[~open_pixels])
        if allowed:  # every open pixel of an image with a novel class takes one of them
            assert np.all(label[open_pixels] != 255)


def test_other_rules_keep_the_manifest_json_they_always_had() -> None:
    """The group settings appear only with --among groups: a pseudo-label artifact made before
    they existed keeps its plan stamp and is still up to date."""
    from simformer_cli.artifacts.pseudolabels import PseudoLabelParams

    test_time = views.TestTimeSettings(short_side=64, max_long_side=96)
    for among in ("all", "image", "quantile"):
        assert set(PseudoLabelParams(test_time=test_time, among=among).model_dump(mode="json")) == {
            "test_time", "min_score", "among"}
    grouped = PseudoLabelParams(test_time=test_time, among="groups", groups=12, appears=0.1).model_dump(mode="json")
    assert (grouped["groups"], grouped["appears"]) == (12, 0.1) and "unnamed" not in grouped
    sure = PseudoLabelParams(test_time=test_time, among="groups", groups=12, appears=0.1, unnamed="ignore")
    assert sure.model_dump(mode="json")["unnamed"] == "ignore"


def test_unnamed_ignore_through_the_cli(cli, trained, tmp_path: Path) -> None:  # noqa: ANN001
    split, model = trained
    result = cli("pseudolabel", "--model", model, "--split", split, "--out", tmp_path / "g.zarr", "--among", "groups",
                 "--groups", "3", "--unnamed", "ignore", "--device", "cpu", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["params"]["unnamed"] == "ignore"
    refused = cli("pseudolabel", "--model", model, "--split", split, "--out", tmp_path / "i.zarr", "--among", "image",
                  "--unnamed", "ignore", "--device", "cpu")
    assert refused.code != 0 and "--among groups" in refused.err and "Traceback" not in refused.err
    assert not (tmp_path / "i.zarr").exists()
