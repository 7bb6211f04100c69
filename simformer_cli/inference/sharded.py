"""Running a model over many images into a label-map artifact, shard by shard, resumably.

Shared by ``infer`` (label = argmax of the scores) and ``pseudolabel`` (label = the pseudo-label
rule); scores come from the job's scorer (a MaskFormer's, or the CAM baseline's). Each
finished shard leaves a marker in the hidden ``.NAME.partial`` folder, so an interrupted run
continues with the first unfinished shard; under torchrun every process takes every n-th shard and
writes whole shards only; rank 0 writes the manifest last.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch
import zarr

from simformer_cli.artifacts.layout import SubsetLayout, plan_layout, write_shard_block
from simformer_cli.artifacts.manifest import ArraySpec, Frozen, Inputs, ManifestBase
from simformer_cli.artifacts.predictions import SCORE_STRIDE, open_or_create_arrays
from simformer_cli.artifacts.store import plan_key, publish, read_manifest, staged_artifact
from simformer_cli.devices import Runtime, broadcast_object
from simformer_cli.progress import Reporter
from simformer_cli.settings.labels import label_dtype_for

DONE_DIR = ".done"
M = TypeVar("M", bound=ManifestBase)
LabelRule = Callable[[int, torch.Tensor], np.ndarray]  # (image index, (K, H, W) scores) -> label map
# (image indices, their (H, W, 3) images) -> (K, H, W) scores of each
ImageScorer = Callable[[Sequence[int], Sequence[np.ndarray]], list[torch.Tensor]]
#: Images handed to the scorer at once (it may batch those of one size).
SCORER_IMAGES = 8


class ImageSource(Protocol):
    names: list[str]
    sizes: np.ndarray

    def image(self, index: int) -> np.ndarray: ...


@dataclass(frozen=True)
class PredictionJob:
    source: ImageSource
    scorer: ImageScorer  # a MaskFormer's semantic scores (``predict.MaskFormerScorer``), or the CAM baseline's
    num_classes: int
    ignore_index: int
    label_rule: LabelRule
    save_scores: bool = False

    @property
    def label_dtype(self) -> str:
        return str(label_dtype_for(self.num_classes))


def argmax_rule(index: int, scores: torch.Tensor) -> np.ndarray:
    return scores.argmax(0).cpu().numpy()


def run_prediction_job(
    job: PredictionJob, *, out: Path, inputs: Inputs, params: Frozen, runtime: Runtime, reporter: Reporter, manifest_model: type[M],
    make_manifest: Callable[[Path, dict[str, ArraySpec], float], M],
) -> tuple[M, str]:
    """Predict every image into ``out``; returns the committed (manifest, digest) on every rank.

    ``make_manifest(staging, arrays, seconds)`` is called (on rank 0) once every label map is written.
    """
    layout = plan_layout("predictions", job.source.sizes)
    began = time.perf_counter()
    if not runtime.is_main:
        staging = Path(broadcast_object(runtime, None))  # type: ignore[arg-type]
        runtime.barrier()
        _predict_shards(job, layout, staging, runtime, reporter)
        runtime.barrier()
        runtime.barrier()  # rank 0 has committed
        return read_manifest(out, manifest_model)
    kind = manifest_model.model_fields["kind"].default
    with staged_artifact(out, kind=kind, inputs=inputs, resume_key=plan_key(inputs, params)) as staging:
        specs = open_or_create_arrays(
            staging, count=len(job.source.names), canvas=layout.canvas, chunk=layout.chunk,
            shard_images=layout.shard_images, label_dtype=job.label_dtype, ignore_index=job.ignore_index,
            num_classes=job.num_classes, save_scores=job.save_scores)
        group = zarr.open_group(store=str(staging), mode="r+")
        group["sizes"][...] = job.source.sizes
        group.attrs["names"] = job.source.names
        broadcast_object(runtime, str(staging))
        runtime.barrier()
        _predict_shards(job, layout, staging, runtime, reporter)
        runtime.barrier()
        for marker in (staging / DONE_DIR).glob("*"):
            marker.unlink()
        (staging / DONE_DIR).rmdir()
        arrays = {name: ArraySpec(shape=shape, dtype=dtype) for name, (shape, dtype) in specs.items()}
        manifest = make_manifest(staging, arrays, time.perf_counter() - began)
        manifest, digest = publish(staging, out, manifest)
    runtime.barrier()
    return manifest, digest


def _predict_shards(job: PredictionJob, layout: SubsetLayout, staging: Path, runtime: Runtime,
                    reporter: Reporter) -> None:
    group = zarr.open_group(store=str(staging), mode="r+")
    labels_array = group["labels"]
    scores_array = group["scores"] if job.save_scores else None
    done_dir = staging / DONE_DIR
    done_dir.mkdir(exist_ok=True)
    shards = [r for i, r in enumerate(layout.shard_ranges()) if i % runtime.world_size == runtime.rank]
    todo = [r for r in shards if not (done_dir / f"{r.start:09d}").exists()]
    already = sum(len(r) for r in shards) - sum(len(r) for r in todo)
    if already:
        reporter.info(f"continuing: {already} images were already done")
    with reporter.task("predicting", sum(len(r) for r in todo)) as advance:
        for shard in todo:
            labels, scores = [], []
            for start in range(shard.start, shard.stop, SCORER_IMAGES):
                indices = range(start, min(start + SCORER_IMAGES, shard.stop))
                for index, score in zip(indices, job.scorer(indices, [job.source.image(i) for i in indices])):
                    labels.append(job.label_rule(index, score).astype(job.label_dtype))
                    if scores_array is not None:
                        small = torch.nn.functional.avg_pool2d(score[None], SCORE_STRIDE, ceil_mode=True)[0]
                        scores.append(small.half().cpu().numpy())
                advance(len(indices))
            write_shard_block(labels_array, shard.start, labels, job.ignore_index)
            if scores_array is not None:
                _write_scores(scores_array, shard.start, scores)
            (done_dir / f"{shard.start:09d}").touch()


def _write_scores(array: zarr.Array, start: int, scores: Sequence[np.ndarray]) -> None:
    height = max(s.shape[1] for s in scores)
    width = max(s.shape[2] for s in scores)
    block = np.zeros((len(scores), array.shape[1], height, width), dtype=np.float16)
    for k, s in enumerate(scores):
        block[k, :, : s.shape[1], : s.shape[2]] = s
    array[start : start + len(scores), :, :height, :width] = block
