"""The train stage: CLI, exact resume, refusals, weak-label-only data path, two-process gloo."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from safetensors.numpy import load_file

from simformer_cli.artifacts.model import ModelManifest
from simformer_cli.artifacts.store import open_artifact
from simformer_cli.artifacts.split import AUDIT_LABELS, SplitArtifact
from simformer_cli.pipeline.train import run_train
from simformer_cli.pipeline.stage import load_model

from conftest import OnTrainingStep, relist_files

TRAIN = dict(iters=4, batch_size=4, device="cpu", checkpoint_every=2)


def weights(path: Path) -> dict[str, np.ndarray]:
    return load_file(str(path / "weights.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert np.array_equal(wa[key], wb[key]), key


def test_two_iterations_through_the_cli(cli, synthetic_split: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.zarr"
    result = cli("train", "--split", synthetic_split, "--out", out, "--iters", "2", "--batch-size", "4",
                 "--device", "cpu", "--json")
    assert result.code == 0, result.err
    manifest, _, _ = open_artifact(out, ModelManifest)
    assert manifest.summary.steps == 2
    assert {"loss_ce", "loss_focal", "loss_dice", "loss_comp", "loss_sim"} <= set(manifest.summary.final_losses)
    assert all(np.isfinite(v) for v in manifest.summary.final_losses.values())
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(0.0 <= record["sim_accuracy"] <= 1.0 for record in log)
    assert not (out / "checkpoints").exists()
    model, loaded, _ = load_model(out)
    assert loaded.novel_classes == SplitArtifact(synthetic_split).manifest.novel_classes
    again = cli("train", "--split", synthetic_split, "--out", out, "--iters", "2", "--batch-size", "4", "--device", "cpu")
    assert again.code == 0 and "up to date" in again.err


def test_regularizer_through_the_cli_is_logged_and_recorded(cli, synthetic_split: Path, tmp_path: Path) -> None:
    out = tmp_path / "dfr.zarr"
    result = cli("train", "--split", synthetic_split, "--out", out, "--iters", "2", "--batch-size", "4",
                 "--device", "cpu", "--regularizer", "dfr", "--set", "loss.dfr_weight=2", "--set", "loss.dfr_points=64")
    assert result.code == 0, result.err
    manifest, _, _ = open_artifact(out, ModelManifest)
    loss = manifest.params.settings.loss
    assert (loss.regularizer, loss.dfr_weight, loss.dfr_points, loss.dfr_pixels) == ("dfr", 2.0, 64, "unlabelled")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(record["loss_dfr"] > 0 and np.isfinite(record["loss_dfr"]) for record in log)
    assert manifest.summary.final_losses["loss_dfr"] == log[-1]["loss_dfr"]
    # The default run records the regularizer as off and logs no such term.
    plain = tmp_path / "plain.zarr"
    assert cli("train", "--split", synthetic_split, "--out", plain, "--iters", "1", "--batch-size", "4",
               "--device", "cpu").code == 0
    manifest, _, _ = open_artifact(plain, ModelManifest)
    assert manifest.params.settings.loss.regularizer == "none" and "loss_dfr" not in manifest.summary.final_losses


@pytest.mark.parametrize(("switch", "setting", "terms"), [
    ("loss.partition=true", ("partition_presence_share", 0.05), ("loss_overlap", "loss_presence")),
    ("loss.novel_mil=true", ("novel_mil_share", 0.05), ("loss_mil",)),
    ("loss.elimination=true", ("elimination_share", 0.2), ("loss_elim",)),
])
def test_naming_terms_through_the_cli_are_logged_and_recorded(cli, synthetic_split: Path, tmp_path: Path, switch: str,
                                                              setting: tuple[str, float], terms: tuple[str, ...]) -> None:
    out = tmp_path / "named.zarr"
    result = cli("train", "--split", synthetic_split, "--out", out, "--iters", "2", "--batch-size", "4",
                 "--device", "cpu", "--set", switch, "--set", f"loss.{setting[0]}={setting[1]}")
    assert result.code == 0, result.err
    manifest, _, _ = open_artifact(out, ModelManifest)
    loss = manifest.params.settings.loss
    assert getattr(loss, switch.split(".")[1].split("=")[0]) is True and getattr(loss, setting[0]) == setting[1]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(record[term]) for record in log for term in terms)
    working = log[1:] if "loss_elim" in terms else log  # elimination compares with a memory filled at step 0
    assert all(record[term] != 0 for record in working for term in terms)


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("overrides", [(), ("loss.elimination=true",)], ids=["default", "elimination-memory"])
def test_interrupted_then_resumed_equals_uninterrupted(synthetic_split: Path, tmp_path: Path,
                                                       overrides: tuple[str, ...]) -> None:
    train = {**TRAIN, "overrides": overrides}  # the elimination memory is state that must resume too
    straight = run_train(split=synthetic_split, out=tmp_path / "straight.zarr", **train)

    def stop_at_three(done: int) -> None:
        if done == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_train(split=synthetic_split, out=tmp_path / "resumed.zarr", reporter=OnTrainingStep(stop_at_three), **train)
    assert not (tmp_path / "resumed.zarr").exists()
    resumed = run_train(split=synthetic_split, out=tmp_path / "resumed.zarr", resume=True, **train)
    assert resumed.manifest.summary.resumed_from == 2
    assert_same_weights(tmp_path / "straight.zarr", tmp_path / "resumed.zarr")
    log = (tmp_path / "resumed.zarr" / "train_log.jsonl").read_text().splitlines()
    assert [int(line.split('"step": ')[1].split(",")[0]) for line in log] == [0, 1, 2, 3]
    assert straight.manifest.summary.final_losses == resumed.manifest.summary.final_losses


def test_resume_refusals(cli, synthetic_split: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.zarr"
    result = cli("train", "--split", synthetic_split, "--out", out, "--iters", "4", "--resume", "--device", "cpu")
    assert result.code == 2 and "no checkpoint" in result.err

    def stop(done: int) -> None:
        if done == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_train(split=synthetic_split, out=out, reporter=OnTrainingStep(stop), **TRAIN)
    result = cli("train", "--split", synthetic_split, "--out", out, "--iters", "5", "--batch-size", "4",
                 "--checkpoint-every", "2", "--resume", "--device", "cpu")
    assert result.code == 2 and "other inputs or settings" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_cuda_without_gpu_is_refused(cli, synthetic_split: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        return  # the refusal only exists where there is no GPU; on a GPU machine cuda must work
    result = cli("train", "--split", synthetic_split, "--out", tmp_path / "m.zarr", "--device", "cuda")
    assert result.code == 2 and "no CUDA GPU" in result.err


def test_novel_pixels_of_audit_labels_never_reach_training(synthetic_split: Path, tmp_path: Path) -> None:
    split_copy = tmp_path / "split.zarr"
    shutil.copytree(synthetic_split, split_copy)
    run_train(split=split_copy, out=tmp_path / "a.zarr", iters=2, batch_size=4, device="cpu")
    split = SplitArtifact(split_copy)
    novel = split.manifest.novel_classes
    audit = zarr.open_group(str(split_copy), mode="r+")[AUDIT_LABELS]
    labels = audit[...]
    is_novel = np.isin(labels, novel)
    assert is_novel.any()
    shifted = labels.copy()
    shifted[is_novel] = np.asarray(novel)[(np.searchsorted(novel, labels[is_novel]) + 1) % len(novel)]
    audit[...] = shifted
    relist_files(split_copy)
    run_train(split=split_copy, out=tmp_path / "b.zarr", iters=2, batch_size=4, device="cpu")
    assert_same_weights(tmp_path / "a.zarr", tmp_path / "b.zarr")


def test_two_process_gloo_run_writes_one_model(synthetic_split: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp.zarr"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # --standalone: a free port of its own, so two runs of the suite on one machine do not collide
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "simformer_cli", "train", "--split", str(synthetic_split), "--out", str(out),
               "--iters", "2", "--batch-size", "4", "--device", "cpu"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest, _, _ = open_artifact(out, ModelManifest)
    assert manifest.summary.world_size == 2 and manifest.summary.steps == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ddp.zarr.partial")] == []


def test_set_overrides_reach_the_recorded_settings(cli, synthetic_split: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.zarr"
    result = cli("train", "--split", synthetic_split, "--out", out, "--iters", "1", "--batch-size", "4",
                 "--device", "cpu", "--set", "loss.complementary=false", "--set", "loss.distill_weight=0.3",
                 "--set", "model.masked_attention=true", "--set", "model.transformer_in_feature=pixel_embedding")
    assert result.code == 0, result.err
    assert "frozen batch norm" not in result.err  # the tiny backbone has GroupNorm: nothing to warn about
    settings = open_artifact(out, ModelManifest)[0].params.settings
    assert settings.loss.complementary is False and settings.loss.distill_weight == 0.3
    assert settings.model.masked_attention and settings.model.transformer_in_feature == "pixel_embedding"
    assert "loss_comp" not in open_artifact(out, ModelManifest)[0].summary.final_losses


@pytest.mark.parametrize(("item", "message"), [
    ("loss.nope=1", "--set loss.nope=1: no setting loss.nope; known keys under loss:"),
    ("loss.distil_weight=1", "did you mean loss.distill_weight?"),
    ("loss=1", "--set loss=1: loss is a group; set one of its keys"),
    ("iters", "--set iters: expected KEY=VALUE"),
    ("loss.distill_weight=-1", "--set loss.distill_weight=-1: Input should be greater than or equal to 0"),
    ("model.transformer_in_feature=res9", "--set model.transformer_in_feature=res9: Input should be"),
])
def test_bad_set_overrides_are_one_line(cli, synthetic_split: Path, tmp_path: Path, item: str, message: str) -> None:
    out = tmp_path / "model.zarr"
    result = cli("train", "--split", synthetic_split, "--out", out, "--iters", "1", "--device", "cpu", "--set", item)
    assert result.code == 2
    assert message in result.err and "Traceback" not in result.err
    assert not out.exists()


def test_oracle_trains_on_the_full_labels(synthetic_split: Path, tmp_path: Path) -> None:
    """The oracle reads the audit labels (novel masks included): changing them changes the model."""
    from simformer_cli.artifacts.split import AuditLabelReader
    from simformer_cli.training.train_data import WeakTrainingSet
    from simformer_cli.settings.training import preset_settings

    split = SplitArtifact(synthetic_split)
    settings = preset_settings("tiny", num_classes=split.num_classes, dataset="synthetic", image_size=64,
                               method="oracle")
    assert not (settings.loss.complementary or settings.loss.similarity or settings.loss.distillation)
    data = WeakTrainingSet(synthetic_split, augment_settings=settings.augment, seed=0,
                           label_reader=AuditLabelReader(synthetic_split), maskless_novel=False)
    novel = set(split.manifest.novel_classes)
    with_novel_masks = [i for i in range(len(data))
                        if novel & set(data[(0, 0, i)][1].classes[data[(0, 0, i)][1].has_mask].tolist())]
    assert with_novel_masks
    run_train(split=synthetic_split, out=tmp_path / "oracle.zarr", method="oracle", iters=1, batch_size=4, device="cpu")
    manifest = open_artifact(tmp_path / "oracle.zarr", ModelManifest)[0]
    assert manifest.params.settings.method == "oracle"


def test_oracle_and_crop_labels_need_audit_labels(cli, tmp_path: Path, folder_dataset: Path) -> None:
    split = tmp_path / "split.zarr"
    assert cli("split", "--dataset", "folder", "--root", folder_dataset, "--ratio", "2:1", "--out", split,
               "--no-keep-train-labels").code == 0
    result = cli("train", "--split", split, "--method", "oracle", "--iters", "1", "--device", "cpu")
    assert result.code == 2 and "--method oracle:" in result.err and "--keep-train-labels" in result.err
    result = cli("train", "--split", split, "--set", "image_labels=crop", "--iters", "1", "--device", "cpu")
    assert result.code == 2 and "image_labels=crop" in result.err and "--keep-train-labels" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_crop_level_labels_keep_the_novel_classes_inside_each_crop(synthetic_split: Path) -> None:
    from simformer_cli.data.augment import augment
    from simformer_cli.settings.augment import AugmentSettings
    from simformer_cli.artifacts.split import AuditLabelReader
    from simformer_cli.training.train_data import WeakTrainingSet

    small_crops = AugmentSettings(short_sides=(64,), max_long_side=64, crop=24)
    whole = WeakTrainingSet(synthetic_split, augment_settings=small_crops, seed=0)
    crops = WeakTrainingSet(synthetic_split, augment_settings=small_crops, seed=0,
                            crop_label_reader=AuditLabelReader(synthetic_split))
    split = SplitArtifact(synthetic_split)
    novel = set(split.manifest.novel_classes)
    dropped = 0
    for index in range(24):
        key = (7, index % 8, index)
        _, whole_targets, _ = whole[key]
        image, crop_targets, _ = crops[key]
        maskless = lambda t: set(t.classes[~t.has_mask].tolist())  # noqa: E731
        # Independently: the full label cut by the same draws, and its novel classes.
        _, full, pad = augment(split.image("train", index), AuditLabelReader(synthetic_split)(index), small_crops,
                               np.random.default_rng([0, 7, index % 8, 0]), split.manifest.ignore_index)
        assert maskless(crop_targets) == maskless(whole_targets) & set(np.unique(full[~pad]).tolist())
        assert maskless(crop_targets) <= novel
        assert np.array_equal(image.numpy(), whole[key][0].numpy())  # the image is the same crop
        assert np.array_equal(crop_targets.masks.numpy(), whole_targets.masks.numpy()[: len(crop_targets.masks)])
        dropped += len(maskless(whole_targets) - maskless(crop_targets))
    assert dropped > 0  # 24-pixel crops of 64-pixel images miss some novel regions


def test_crop_level_labels_through_the_cli_and_their_refusals(cli, synthetic_split: Path, tmp_path: Path) -> None:
    out = tmp_path / "crop.zarr"
    result = cli("train", "--split", synthetic_split, "--out", out, "--iters", "1", "--batch-size", "4",
                 "--device", "cpu", "--set", "image_labels=crop")
    assert result.code == 0, result.err
    assert open_artifact(out, ModelManifest)[0].params.settings.image_labels == "crop"
    oracle = cli("train", "--split", synthetic_split, "--out", tmp_path / "o.zarr", "--iters", "1",
                 "--method", "oracle", "--device", "cpu", "--set", "image_labels=crop")
    assert oracle.code == 2 and "weak-shot training" in oracle.err and len(oracle.err.strip().splitlines()) == 1


def test_a_batch_read_gives_what_single_reads_give(synthetic_split: Path) -> None:
    # WeakTrainingSet reads a whole batch through zarr at once (read_many); the arrays must be the
    # ones image()/label() read one by one, cropped to each image's own size.
    from simformer_cli.settings.augment import AugmentSettings
    from simformer_cli.training.train_data import WeakTrainingSet

    split = SplitArtifact(synthetic_split)
    indices = [5, 0, 5, 11, 3]
    images, labels = split.read_many("train", indices, labels=True)
    for index, image, label in zip(indices, images, labels):
        assert np.array_equal(image, split.image("train", index))
        assert np.array_equal(label, split.label("train", index))
    assert split.read_many("val", [1], labels=False)[1] == []
    dataset = WeakTrainingSet(synthetic_split, augment_settings=AugmentSettings(short_sides=(64,), max_long_side=64,
                                                                                crop=32), seed=0)
    keys = [(3, slot, index) for slot, index in enumerate(indices)]
    for key, (image, targets, got_key) in zip(keys, dataset.__getitems__(keys)):
        single_image, single_targets, _ = dataset[key]
        assert got_key == key and torch.equal(image, single_image)
        assert torch.equal(targets.masks, single_targets.masks) and torch.equal(targets.classes, single_targets.classes)


def test_data_loading_workers_default_to_none_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from simformer_cli.training.loop import default_workers

    assert default_workers("cpu") == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(16)))
    assert default_workers("cuda") == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_workers("cuda") == 1  # two cores per process: one for it, one worker
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0})
    assert default_workers("cuda") == 0


def test_the_optimiser_is_fused_on_cpu() -> None:
    from simformer_cli.training.optim import build_optimizer
    from simformer_cli.settings.training import OptimSettings

    optimizer = build_optimizer(torch.nn.Linear(3, 2), OptimSettings())
    assert optimizer.defaults["fused"] is True


def test_cached_samples_are_the_samples_read_from_the_split(synthetic_split: Path) -> None:
    from simformer_cli.settings.augment import AugmentSettings
    from simformer_cli.training.train_data import WeakTrainingSet

    settings = AugmentSettings(short_sides=(64,), max_long_side=64, crop=32)
    plain = WeakTrainingSet(synthetic_split, augment_settings=settings, seed=0)
    split = SplitArtifact(synthetic_split)
    sample = split.image("train", 0).nbytes + split.label("train", 0).nbytes  # the synthetic images share a size
    cached = WeakTrainingSet(synthetic_split, augment_settings=settings, seed=0, cache_bytes=2 * sample + sample // 2)
    for step in range(3):  # the second and third steps find images 0 and 1 in the cache
        keys = [(step, 0, 0), (step, 1, 1), (step, 2, 2), (step, 3, 1)]
        for (image, targets, _), (expected, expected_targets, _) in zip(cached.__getitems__(keys),
                                                                         plain.__getitems__(keys)):
            assert torch.equal(image, expected) and torch.equal(targets.masks, expected_targets.masks)
    assert sorted(cached._cache) == [0, 1]  # the budget held two images with their labels, not three
    assert not cached._cache[0][0].flags.writeable
    assert pickle.loads(pickle.dumps(cached))._cache == {}  # workers start empty


def test_a_subset_that_fits_is_preloaded_by_shards_and_gives_the_same_samples(synthetic_split: Path) -> None:
    from simformer_cli.settings.augment import AugmentSettings
    from simformer_cli.training.train_data import WeakTrainingSet

    settings = AugmentSettings(short_sides=(64,), max_long_side=64, crop=32)
    split = SplitArtifact(synthetic_split)
    count = split.count("train")
    plain = WeakTrainingSet(synthetic_split, augment_settings=settings, seed=0)
    whole = WeakTrainingSet(synthetic_split, augment_settings=settings, seed=0, cache_bytes=1 << 30)
    reads: list[int] = []

    def reader(index: int) -> np.ndarray:  # a label reader (as retrain's pseudo labels) is read once per image
        reads.append(index)
        return split.label("train", index)

    through_reader = WeakTrainingSet(synthetic_split, augment_settings=settings, seed=0, cache_bytes=1 << 30,
                                     label_reader=reader)
    keys = [(0, 0, count - 1), (0, 1, 0), (0, 2, 3), (0, 3, 3)]
    expected = plain.__getitems__(keys)
    for dataset in (whole, through_reader):
        for (image, targets, _), (want, want_targets, _) in zip(dataset.__getitems__(keys), expected):
            assert torch.equal(image, want) and torch.equal(targets.masks, want_targets.masks)
        assert sorted(dataset._cache) == list(range(count))  # the first batch loaded the whole subset
        for index in (0, count - 1):
            assert np.array_equal(dataset._cache[index][0], split.image("train", index))
            assert np.array_equal(dataset._cache[index][1], split.label("train", index))
    assert sorted(reads) == list(range(count))
    through_reader.__getitems__(keys)
    assert len(reads) == count
    assert pickle.loads(pickle.dumps(whole))._cache == {}  # each worker preloads for itself


def test_a_loader_worker_gives_the_batches_of_the_main_process(synthetic_split: Path) -> None:
    # On CUDA the loop reads through worker processes: each one unpickles the dataset with an
    # empty cache, preloads the subset itself and sends whole batches back.
    from torch.utils.data import DataLoader

    from simformer_cli.settings.augment import AugmentSettings
    from simformer_cli.data.pairs import PartnerSampler
    from simformer_cli.training.train_data import StepBatchSampler, StepPlan, WeakTrainingSet, collate

    split = SplitArtifact(synthetic_split)
    partners = PartnerSampler(split.image_labels("train"), split.manifest.novel_classes, split.manifest.base_classes)
    plan = StepPlan(seed=0, num_images=split.count("train"), batch_size=4, pairs=True)
    batches = {}
    for workers in (0, 1):
        dataset = WeakTrainingSet(synthetic_split, augment_settings=AugmentSettings(short_sides=(64,),
                                  max_long_side=64, crop=32), seed=0, cache_bytes=1 << 30)
        sampler = StepBatchSampler(plan, partners, start=0, stop=3, rank=0, world_size=1, accumulation=1)
        batches[workers] = list(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers))
    assert len(batches[0]) == len(batches[1]) == 3
    for here, there in zip(batches[0], batches[1]):
        assert here.keys == there.keys and torch.equal(here.images, there.images)
        for mine, theirs in zip(here.targets, there.targets):
            assert all(torch.equal(getattr(mine, name), getattr(theirs, name)) for name in mine.__dataclass_fields__)
