"""The ``infer`` stage: a model and a split subset (or a folder of images) -> a predictions artifact.

Images are processed in shards; each finished shard leaves a marker in the hidden
``.NAME.partial`` folder, so an interrupted run continues with the first unfinished shard. Under
torchrun each process takes every n-th shard and writes whole shards only.
"""

from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from simformer_cli.artifacts.digest import canonical_json, files_fingerprint, sha256_of
from simformer_cli.artifacts.manifest import ArraySpec, ArtifactRef, DatasetFingerprint, Inputs, Provenance
from simformer_cli.artifacts.model_manifest import ModelManifest
from simformer_cli.artifacts.predictions_manifest import InferParams, InferSummary, PredictionsManifest
from simformer_cli.artifacts.store import commit, is_artifact, read_manifest, same_plan, staged_artifact
from simformer_cli.data.folder import IMAGE_SUFFIXES
from simformer_cli.data.ingest import _file_digest, _image_size
from simformer_cli.data.source import decode_image, read_bytes
from simformer_cli.data.split_store import SplitArtifact, plan_layout, write_shard_block
from simformer_cli.errors import ArtifactError, UserError
from simformer_cli.inference.predict import TestTimeSettings, predict_scores
from simformer_cli.inference.store import SCORE_STRIDE, open_or_create_arrays
from simformer_cli.progress import Reporter, SilentReporter
from simformer_cli.training.devices import DeviceChoice, Runtime, broadcast_object, start_runtime, stop_runtime
from simformer_cli.training.model_artifact import load_model

DONE_DIR = ".done"


@dataclass(frozen=True)
class InferResult:
    manifest: PredictionsManifest
    digest: str
    path: Path
    skipped: bool


class SplitImages:
    def __init__(self, split: SplitArtifact, subset: str) -> None:
        self.split, self.subset = split, subset
        self.names = split.names(subset)
        self.sizes = split.sizes(subset)

    def image(self, index: int) -> np.ndarray:
        return self.split.image(self.subset, index)


class FolderImages:
    """Every .jpg/.jpeg/.png directly inside a folder, in name order."""

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise UserError(f"--images {folder}: no such folder")
        self.files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise UserError(f"--images {folder}: no .jpg, .jpeg or .png images in this folder")
        self.names = [p.stem for p in self.files]
        if len(set(self.names)) != len(self.names):
            raise UserError(f"--images {folder}: two images share a name (e.g. a.jpg and a.png); keep one")
        self.sizes = np.asarray([_image_size(p) for p in self.files], dtype=np.int32)
        self.fingerprint = DatasetFingerprint(
            name="images", layout="folder", files=len(self.files),
            digest=files_fingerprint((p.name, _file_digest(p)) for p in self.files))

    def image(self, index: int) -> np.ndarray:
        path = self.files[index]
        return decode_image(path, read_bytes(path))


def test_time_settings(model: ModelManifest, scales: tuple[float, ...], flip: bool) -> TestTimeSettings:
    """The preset's own test size: the training crop (512 ADE20K / 640 COCO-Stuff in the paper preset)."""
    augment = model.params.settings.augment
    return TestTimeSettings(short_side=augment.crop, max_long_side=augment.max_long_side, scales=scales, flip=flip)


def run_infer(
    *,
    model: Path,
    split: Path | None = None,
    subset: Literal["train", "val"] = "val",
    images: Path | None = None,
    out: Path | None = None,
    scales: tuple[float, ...] = (1.0,),
    flip: bool = False,
    save_scores: bool = False,
    device: DeviceChoice = "auto",
    force: bool = False,
    reporter: Reporter | None = None,
) -> InferResult:
    if (split is None) == (images is None):
        raise UserError("infer needs exactly one of --split (with --subset) or --images")
    if not scales or any(s <= 0 for s in scales):
        raise UserError("--scales: give positive factors, e.g. 0.75,1.0,1.25")
    runtime = start_runtime(device)
    reporter = reporter if (reporter is not None and runtime.is_main) else SilentReporter()
    try:
        network, model_manifest, model_digest = load_model(model, runtime.device)
        refs = {"model": ArtifactRef(path=str(Path(model).absolute()), kind="model", digest=model_digest)}
        if split is not None:
            split_artifact = SplitArtifact(split)
            trained_on = model_manifest.inputs.artifacts.get("split")
            if trained_on is None or trained_on.digest != split_artifact.digest:
                raise UserError(f"--split {split}: the model {model} was trained on another split; "
                                "infer with the split it was trained on")
            source: SplitImages | FolderImages = SplitImages(split_artifact, subset)
            refs["split"] = ArtifactRef(path=str(Path(split).absolute()), kind="split", digest=split_artifact.digest)
            inputs = Inputs(artifacts=refs)
            params = InferParams(source="split", subset=subset,
                                 test_time=test_time_settings(model_manifest, scales, flip), save_scores=save_scores)
            default_out = Path(model).with_name(f"{Path(model).stem}.pred-{subset}.zarr")
        else:
            source = FolderImages(Path(images))  # type: ignore[arg-type]
            inputs = Inputs(artifacts=refs, dataset=source.fingerprint)
            params = InferParams(source="images", test_time=test_time_settings(model_manifest, scales, flip),
                                 save_scores=save_scores)
            default_out = Path(model).with_name(f"{Path(model).stem}.pred-images.zarr")
        out = Path(out) if out is not None else default_out
        if is_artifact(out) and not force:
            try:
                existing, digest = read_manifest(out, PredictionsManifest)
                if same_plan(existing, inputs, params):
                    reporter.info(f"{out}: up to date (same model, images and settings), skipping; pass --force to redo")
                    return InferResult(existing, digest, out, True)
            except ArtifactError:
                pass
        key = sha256_of(canonical_json({"inputs": inputs.model_dump(mode="json"), "params": params.model_dump(mode="json")}))
        return _run(network, model_manifest, source, inputs, params, out, key, runtime, reporter)
    finally:
        stop_runtime(runtime)


def _run(network, model_manifest, source, inputs, params, out, key, runtime: Runtime, reporter):  # noqa: ANN001, ANN202
    num_classes = len(model_manifest.class_names)
    label_dtype = "uint8" if num_classes < 255 else "uint16"
    layout = plan_layout("predictions", source.sizes)
    common = dict(count=len(source.names), canvas=layout.canvas, chunk=layout.chunk,
                  shard_images=layout.shard_images, label_dtype=label_dtype,
                  ignore_index=model_manifest.ignore_index, num_classes=num_classes, save_scores=params.save_scores)
    began = time.perf_counter()
    if not runtime.is_main:
        staging = Path(broadcast_object(runtime, None))  # type: ignore[arg-type]
        runtime.barrier()
        _predict_shards(network, source, layout, params, staging, runtime, reporter)
        runtime.barrier()
        return InferResult(*read_manifest(out, PredictionsManifest), out, False)  # type: ignore[misc]
    with staged_artifact(out, resume_key=key) as staging:
        specs = open_or_create_arrays(staging, **common)
        import zarr

        group = zarr.open_group(store=str(staging), mode="r+")
        group["sizes"][...] = source.sizes
        group.attrs["names"] = source.names
        broadcast_object(runtime, str(staging))
        runtime.barrier()
        _predict_shards(network, source, layout, params, staging, runtime, reporter)
        runtime.barrier()
        seconds = time.perf_counter() - began
        for marker in (staging / DONE_DIR).glob("*"):
            marker.unlink()
        (staging / DONE_DIR).rmdir()
        manifest = PredictionsManifest(
            inputs=inputs, params=params,
            arrays={name: ArraySpec(shape=shape, dtype=dtype) for name, (shape, dtype) in specs.items()},
            provenance=Provenance(command=list(sys.argv), host=socket.gethostname()),
            summary=InferSummary(images=len(source.names), seconds=round(seconds, 2),
                                 images_per_second=round(len(source.names) / max(seconds, 1e-9), 2),
                                 device=str(runtime.device)),
            class_names=model_manifest.class_names, base_classes=model_manifest.base_classes,
            novel_classes=model_manifest.novel_classes, ignore_index=model_manifest.ignore_index,
            label_dtype=label_dtype,
        )
        digest = commit(staging, out, manifest)
    return InferResult(manifest, digest, out, False)


def _predict_shards(network, source, layout, params: InferParams, staging: Path, runtime: Runtime,  # noqa: ANN001
                    reporter: Reporter) -> None:
    import zarr

    group = zarr.open_group(store=str(staging), mode="r+")
    done_dir = staging / DONE_DIR
    done_dir.mkdir(exist_ok=True)
    shards = [r for i, r in enumerate(layout.shard_ranges()) if i % runtime.world_size == runtime.rank]
    todo = [r for r in shards if not (done_dir / f"{r.start:09d}").exists()]
    skipped = sum(len(r) for r in shards) - sum(len(r) for r in todo)
    if skipped:
        reporter.info(f"continuing: {skipped} images already predicted")
    with reporter.task("predicting", sum(len(r) for r in todo)) as advance:
        for shard in todo:
            labels, scores = [], []
            for index in shard:
                score = predict_scores(network, [source.image(index)], params.test_time, runtime.device,
                                       runtime.autocast_dtype)[0]
                labels.append(score.argmax(0).to(torch.uint8 if group["labels"].dtype == np.uint8 else torch.int32).cpu().numpy())
                if params.save_scores:
                    small = torch.nn.functional.avg_pool2d(score[None], SCORE_STRIDE, ceil_mode=True)[0]
                    scores.append(small.half().cpu().numpy().transpose(1, 2, 0))
                advance(1)
            write_shard_block(group["labels"], shard.start, labels, int(group["labels"].fill_value))
            if scores:
                _write_scores(group["scores"], shard.start, scores)
            (done_dir / f"{shard.start:09d}").touch()


def _write_scores(array, start: int, scores: list[np.ndarray]) -> None:  # noqa: ANN001
    height = max(s.shape[0] for s in scores)
    width = max(s.shape[1] for s in scores)
    block = np.zeros((len(scores), array.shape[1], height, width), dtype=np.float16)
    for k, s in enumerate(scores):
        block[k, :, : s.shape[0], : s.shape[1]] = s.transpose(2, 0, 1)
    array[start : start + len(scores), :, :height, :width] = block
