"""The CAM baseline: network shapes and losses, base-only affinity pairs, the random walk, and
train --method cam -> pseudolabel -> retrain through the CLI (infer refused)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from safetensors.numpy import load_file

from simformer_cli.artifacts.model import ModelManifest
from simformer_cli.artifacts.store import read_manifest
from simformer_cli.cam.affinity import disk_offsets, random_walk, shifted, transition
from simformer_cli.cam.losses import CamObjective, affinity_loss, base_pixel_loss, cell_labels, image_logits
from simformer_cli.cam.network import build_cam_model
from simformer_cli.cam.pseudolabel import CamScorer
from simformer_cli.settings.cam import tiny_cam_settings
from simformer_cli.artifacts.split import AUDIT_LABELS, SplitArtifact
from simformer_cli.settings.model import tiny_model_settings
from simformer_cli.settings.test_time import TestTimeSettings
from simformer_cli.model.targets import NOT_BASE, targets_from_label_map
from simformer_cli.artifacts.pseudolabels import PseudoLabelReader
from simformer_cli.pipeline.train import run_train
from simformer_cli.devices import start_runtime
from simformer_cli.settings.training import TrainSettings, preset_settings

from conftest import OnTrainingStep, relist_files

CAM_TRAIN = dict(method="cam", iters=2, batch_size=4, device="cpu", checkpoint_every=1)


def test_network_shapes_finite_losses_and_backward() -> None:
    torch.manual_seed(0)
    cam = tiny_cam_settings()
    objective = CamObjective(build_cam_model(tiny_model_settings(5), cam), cam, num_classes=5)
    outputs = objective.model(torch.randn(2, 3, 64, 96))
    assert outputs["cams"].shape == (2, 5, 4, 6)
    assert outputs["embedding"].shape == (2, cam.affinity_dim, 16, 24)
    label = torch.full((64, 96), 255)
    label[:32], label[32:, :48] = 0, 1
    pad = torch.zeros(64, 96, dtype=torch.bool)
    pad[:, 80:] = True
    target = targets_from_label_map(label, pad, base_classes=[0, 1, 2], maskless_classes=[3], ignore_index=255)
    losses = objective(torch.randint(0, 256, (2, 3, 64, 96)), [target, target], torch.Generator())
    assert set(losses) == {"loss_cls", "loss_aff", "loss_base"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    for head in ("backbone", "cam_head", "affinity_head"):
        grads = [p.grad for p in getattr(objective.model, head).parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), head
        assert any(g.abs().sum() > 0 for g in grads), head


def test_image_logits_pool_real_pixels_only() -> None:
    cams = torch.tensor([[0.0, 1.0, 2.0, 100.0]]).view(1, 1, 1, 4)
    pad = torch.zeros(1, 16, 64, dtype=torch.bool)
    pad[..., 48:] = True  # the last CAM cell is padding
    assert image_logits(cams, pad, sharpness=1e-4).item() == pytest.approx(1.0, abs=1e-3)  # the mean
    assert image_logits(cams, pad, sharpness=50.0).item() == pytest.approx(2.0, abs=0.05)  # the maximum
    assert image_logits(cams, pad, sharpness=1.0).item() == pytest.approx(math.log((1 + math.e + math.e**2) / 3))


def test_base_pixel_loss_on_known_cells() -> None:
    cams = torch.tensor([2.0, -1.0, 0.5]).view(1, 3, 1, 1)  # one CAM cell covering 2x2 stride-4 cells
    cells = torch.tensor([[[1, 1], [NOT_BASE, NOT_BASE]]])
    bce = [math.log1p(math.exp(-z)) if c == 1 else math.log1p(math.exp(z)) for c, z in enumerate([2.0, -1.0, 0.5])]
    assert base_pixel_loss(cams, cells).item() == pytest.approx(sum(bce) / 3, rel=1e-6)
    assert base_pixel_loss(cams, torch.full((1, 2, 2), NOT_BASE)).item() == 0


def test_cells_are_base_only_where_all_their_pixels_agree() -> None:
    base = torch.full((1, 8, 8), 1)
    base[0, :4, 6] = 2  # cell (0, 1) mixes two base classes
    base[0, 5, 1] = NOT_BASE  # cell (1, 0) holds a novel or unlabelled pixel
    base[0, 4:, 4:] = 2
    assert cell_labels(base).tolist() == [[[1, NOT_BASE], [NOT_BASE, 2]]]


def test_affinity_loss_on_known_pairs() -> None:
    cells = torch.tensor([[[0, 0, 1, NOT_BASE]]])  # one row: pairs (0,1) same, (1,2) different
    embedding = torch.tensor([0.0, 0.5, 2.5, 40.0]).view(1, 1, 1, 4)
    radius = 2  # within one row only the offset (0, 1) is closer than 2 cells
    expected = (0.5 + -math.log(1 - math.exp(-2.0))) / 2
    assert affinity_loss(embedding, cells, radius).item() == pytest.approx(expected, rel=1e-6)
    far = torch.tensor([[[0, NOT_BASE, 1, 1]]])  # no pair of base neighbours closer than 2 cells but (2,3)
    assert affinity_loss(embedding, far, radius).item() == pytest.approx(37.5)


def test_affinity_loss_never_reads_cells_without_a_base_label() -> None:
    generator = torch.Generator().manual_seed(0)
    cells = torch.randint(0, 3, (2, 10, 12), generator=generator)
    cells[:, 3:7, 4:9] = NOT_BASE
    embedding = torch.randn(2, 6, 10, 12, generator=generator, requires_grad=True)
    loss = affinity_loss(embedding, cells, radius=3)
    loss.backward()
    unknown = (cells == NOT_BASE)[:, None].expand_as(embedding)
    assert embedding.grad[unknown].abs().max() == 0 and embedding.grad[~unknown].abs().max() > 0
    changed = embedding.detach().clone()
    changed[unknown] = torch.randn(int(unknown.sum()), generator=generator) * 100
    assert affinity_loss(changed, cells, radius=3).item() == pytest.approx(loss.item(), rel=1e-6)


def test_transition_rows_sum_to_one_and_the_walk_stays_convex() -> None:
    generator = torch.Generator().manual_seed(1)
    embedding = torch.randn(1, 4, 9, 11, generator=generator)
    transitions = transition(embedding, radius=3, beta=2.0)
    assert transitions.shape == (1, len(disk_offsets(3)), 9, 11)
    assert torch.allclose(transitions.sum(dim=1), torch.ones(1, 9, 11))
    for k, offset in enumerate(disk_offsets(3)):  # no weight on neighbours outside the map
        outside = shifted(torch.ones(9, 11), offset) == 0
        assert transitions[0, k][outside].abs().sum() == 0
    scores = torch.rand(1, 2, 9, 11, generator=generator)
    walked = random_walk(scores, transitions, radius=3, iterations=5)
    assert walked.min() >= scores.min() - 1e-6 and walked.max() <= scores.max() + 1e-6
    assert torch.allclose(random_walk(torch.full((1, 1, 9, 11), 0.7), transitions, 3, 5), torch.tensor(0.7))


def test_walk_spreads_a_seed_over_its_own_region_only() -> None:
    embedding = torch.zeros(1, 1, 8, 12)
    embedding[..., 6:] = 10.0  # two regions: columns 0-5 and 6-11
    seed = torch.zeros(1, 1, 8, 12)
    seed[0, 0, 2, 1] = 1.0
    walked = random_walk(seed, transition(embedding, radius=3, beta=8.0), radius=3, iterations=20)[0, 0]
    assert walked[:, :6].min() > 1e-3
    assert walked[:, 6:].max() < 1e-12
    assert walked[:, :6].max() < 2 * walked[:, :6].min()  # near-uniform over its region after 20 steps


@pytest.mark.parametrize("scales, flip", [((1.0,), False), ((0.75, 1.0), True), ((1.5,), False)])
def test_scorer_gives_refined_scores_to_image_novel_classes_only(synthetic_split: Path, scales, flip) -> None:  # noqa: ANN001
    split = SplitArtifact(synthetic_split)
    settings = preset_settings("tiny", num_classes=split.num_classes, dataset="synthetic", image_size=64, method="cam")
    torch.manual_seed(0)
    network = build_cam_model(settings.model, settings.cam).eval()
    test_time = TestTimeSettings(short_side=64, max_long_side=256, scales=scales, flip=flip)
    scorer = CamScorer(network, split, settings.cam, test_time, start_runtime("cpu"))
    novel = set(split.manifest.novel_classes)
    with_novel = [i for i in range(split.count("train")) if novel & set(np.flatnonzero(split.image_labels("train")[i]))]
    for index in (with_novel[0], next(i for i in range(split.count("train")) if i not in with_novel)):
        scores = scorer.one(index, split.image("train", index))
        candidates = sorted(novel & set(np.flatnonzero(split.image_labels("train")[index]).tolist()))
        assert scores.shape == (split.num_classes, *split.sizes("train")[index])
        others = [c for c in range(split.num_classes) if c not in candidates]
        assert bool((scores[others] == -1).all())
        if candidates:
            assert scores[candidates].min() >= 0 and scores[candidates].max() <= 1 + 1e-5


def test_cam_settings_come_with_method_cam_only() -> None:
    settings = preset_settings("tiny", num_classes=6, dataset="synthetic", image_size=64, method="cam")
    assert settings.cam == tiny_cam_settings() and not settings.loss.needs_pairs
    assert preset_settings("tiny", num_classes=6, dataset="synthetic", image_size=64).cam is None
    with pytest.raises(ValueError, match="method cam"):
        TrainSettings.model_validate({**settings.model_dump(), "method": "simformer"})


def test_train_pseudolabel_retrain_through_the_cli(cli, synthetic_split: Path, tmp_path: Path) -> None:
    model = tmp_path / "cam.zarr"
    trained = cli("train", "--split", synthetic_split, "--method", "cam", "--out", model, "--iters", "2",
                  "--batch-size", "4", "--set", "cam.walk_iterations=4", "--device", "cpu")
    assert trained.code == 0, trained.err
    manifest, _ = read_manifest(model, ModelManifest)
    assert manifest.params.settings.method == "cam" and manifest.params.settings.cam.walk_iterations == 4
    assert set(manifest.summary.final_losses) == {"loss_cls", "loss_aff", "loss_base"}
    assert all(np.isfinite(v) for v in manifest.summary.final_losses.values())
    assert [json.loads(line)["step"] for line in (model / "train_log.jsonl").read_text().splitlines()] == [0, 1]

    out = tmp_path / "pl.zarr"
    labelled = cli("pseudolabel", "--model", model, "--split", synthetic_split, "--out", out, "--device", "cpu", "--json")
    assert labelled.code == 0, labelled.err
    pseudo = json.loads(labelled.out)
    assert pseudo["params"]["min_score"] == tiny_cam_settings().min_score
    assert pseudo["summary"]["novel_miou_vs_audit"] is not None and pseudo["summary"]["novel_pixel_share"] > 0
    split = SplitArtifact(synthetic_split)
    novel, reader = set(split.manifest.novel_classes), PseudoLabelReader(out)
    for index in range(split.count("train")):
        label, weak = reader(index), split.label("train", index)
        base = weak != 255
        assert np.array_equal(label[base], weak[base])
        allowed = set(np.flatnonzero(split.image_labels("train")[index])) & novel
        assert set(np.unique(label[~base]).tolist()) <= allowed | {255}
        if not allowed:
            assert np.array_equal(label, weak)

    retrained = cli("retrain", "--split", synthetic_split, "--pseudolabels", out, "--out", tmp_path / "rt.zarr",
                    "--iters", "1", "--batch-size", "2", "--device", "cpu")
    assert retrained.code == 0, retrained.err
    assert read_manifest(tmp_path / "rt.zarr", ModelManifest)[0].params.settings.method == "supervised"

    grouped = cli("pseudolabel", "--model", model, "--split", synthetic_split, "--out", tmp_path / "g.zarr",
                  "--among", "groups", "--device", "cpu")
    assert grouped.code == 2 and len(grouped.err.strip().splitlines()) == 1
    assert "--among groups" in grouped.err and "--among image" in grouped.err
    assert not (tmp_path / "g.zarr").exists()

    refused = cli("infer", "--model", model, "--split", synthetic_split, "--out", tmp_path / "pred.zarr", "--device", "cpu")
    assert refused.code == 2 and len(refused.err.strip().splitlines()) == 1
    assert "is a CAM classifier" in refused.err and "simformer retrain" in refused.err
    assert not (tmp_path / "pred.zarr").exists()


def weights(path: Path) -> dict[str, np.ndarray]:
    return load_file(str(path / "weights.safetensors"))


def test_training_ignores_novel_pixels_and_resumes_exactly(synthetic_split: Path, tmp_path: Path) -> None:
    split_copy = tmp_path / "split.zarr"
    shutil.copytree(synthetic_split, split_copy)
    straight = run_train(split=split_copy, out=tmp_path / "a.zarr", **CAM_TRAIN)
    novel = SplitArtifact(split_copy).manifest.novel_classes
    audit = zarr.open_group(str(split_copy), mode="r+")[AUDIT_LABELS]
    labels = audit[...]
    is_novel = np.isin(labels, novel)
    labels[is_novel] = np.asarray(novel)[(np.searchsorted(novel, labels[is_novel]) + 1) % len(novel)]
    audit[...] = labels
    relist_files(split_copy)

    class Interrupt(Exception):
        pass

    def stop(done: int) -> None:
        if done == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_train(split=split_copy, out=tmp_path / "b.zarr", reporter=OnTrainingStep(stop), **CAM_TRAIN)
    resumed = run_train(split=split_copy, out=tmp_path / "b.zarr", resume=True, **CAM_TRAIN)
    assert resumed.manifest.summary.resumed_from == 1
    assert straight.manifest.summary.final_losses == resumed.manifest.summary.final_losses
    a, b = weights(tmp_path / "a.zarr"), weights(tmp_path / "b.zarr")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
