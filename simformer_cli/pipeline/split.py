"""The ``split`` stage: a raw dataset (or the synthetic generator) -> a split artifact."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from simformer_cli.artifacts.digest import files_fingerprint
from simformer_cli.artifacts.manifest import ArraySpec, DatasetFingerprint, Inputs, Provenance
from simformer_cli.artifacts.split_manifest import (
    DatasetName,
    SplitManifest,
    SplitParams,
    SplitSummary,
    SubsetSummary,
)
from simformer_cli.artifacts.store import (
    check_output_path,
    disk_full_message,
    is_disk_full,
    is_artifact,
    open_artifact,
    publish,
    read_manifest,
    same_plan,
    staged_artifact,
)
from simformer_cli.data.class_split import draw_novel_classes, parse_ratio, resolve_class_list
from simformer_cli.data.datasets import datasets_root, load_dataset
from simformer_cli.data.folder import load_folder
from simformer_cli.data.ingest import ShardTask, WorkerPool, default_workers, ingest_subset, scan
from simformer_cli.data.official_splits import official_novel_classes
from simformer_cli.data.source import RawDataset, label_dtype_for
from simformer_cli.data.split_store import create_arrays, plan_layout
from simformer_cli.data.synthetic import GENERATOR_VERSION, SyntheticSettings, generate_synthetic
from simformer_cli.errors import ArtifactError, UserError
from simformer_cli.progress import Reporter, SilentReporter

#: Subsets in the order they are stored: test where the dataset has one, holdout with --holdout.
SUBSET_ORDER = ("train", "val", "test", "holdout")


def hold_out(raw: RawDataset, count: int) -> RawDataset:
    """Move ``count`` training images to a ``holdout`` subset (kept with full labels, for tuning):
    those whose names have the smallest ``sha256("simformer-holdout:NAME")``, so the choice does not
    depend on the class split, the order of files or the machine."""
    if count == 0:
        return raw
    train = raw.subsets["train"]
    if count > len(train) - 2:
        raise UserError(f"--holdout {count}: the dataset has {len(train)} training images; "
                        "hold out fewer, leaving at least 2 to train on")
    ranked = sorted(train, key=lambda sample: hashlib.sha256(f"simformer-holdout:{sample.name}".encode()).digest())
    held = {sample.name for sample in ranked[:count]}
    subsets = dict(raw.subsets, train=tuple(s for s in train if s.name not in held),
                   holdout=tuple(s for s in train if s.name in held))
    return dataclasses.replace(raw, subsets=subsets)


def subsets_of(raw: RawDataset) -> tuple[str, ...]:
    return tuple(subset for subset in SUBSET_ORDER if subset in raw.subsets)


@dataclass(frozen=True)
class SplitResult:
    manifest: SplitManifest
    digest: str
    path: Path
    skipped: bool


def default_split_out(dataset: str, params: SplitParams) -> Path:
    if params.selection == "official":
        tag = f"official{params.official_split}"
    elif params.selection == "ratio":
        tag = f"r{params.ratio[0]}-{params.ratio[1]}-s{params.seed}"  # type: ignore[index]
    else:
        tag = "custom"
    return Path("runs") / f"{dataset}-{tag}" / "split.zarr"


def plan_params(
    *,
    dataset: DatasetName,
    ratio: str | None,
    seed: int | None,
    official_split: int | None,
    novel_classes: str | None,
    keep_train_labels: bool,
    synthetic: SyntheticSettings | None,
    holdout: int = 0,
) -> SplitParams:
    """Check the class-selection options and fill in defaults (3:1, seed 0)."""
    chosen = [name for name, value in (("--ratio/--seed", ratio is not None or seed is not None),
                                       ("--official-split", official_split is not None),
                                       ("--novel-classes", novel_classes is not None)) if value]
    if len(chosen) > 1:
        raise UserError(f"{' and '.join(chosen)} both choose the novel classes; pass only one of them")
    is_synthetic = dataset == "synthetic"
    if holdout < 0:
        raise UserError(f"--holdout {holdout}: expected 0 or more training images to hold out")
    common = {"dataset": dataset, "keep_train_labels": keep_train_labels, "holdout": holdout,
              "synthetic": (synthetic or SyntheticSettings()) if is_synthetic else None,
              "synthetic_generator_version": GENERATOR_VERSION if is_synthetic else None}
    if official_split is not None:
        if dataset not in ("ade20k", "coco-stuff-10k"):
            raise UserError(f"--official-split: only ade20k and coco-stuff-10k have published splits, not {dataset}")
        official_novel_classes(dataset, official_split)  # validates the number
        return SplitParams(selection="official", official_split=official_split, **common)
    if novel_classes is not None:
        names = [item.strip() for item in novel_classes.split(",") if item.strip()]
        return SplitParams(selection="explicit", requested_novel=names, **common)
    return SplitParams(selection="ratio", ratio=parse_ratio("3:1" if ratio is None else ratio), seed=seed or 0, **common)


def choose_novel(params: SplitParams, raw: RawDataset) -> tuple[int, ...]:
    if params.selection == "official":
        return official_novel_classes(params.dataset, params.official_split)  # type: ignore[arg-type]
    if params.selection == "explicit":
        return resolve_class_list(",".join(params.requested_novel or []), raw.class_names)
    return draw_novel_classes(raw.num_classes, params.ratio, params.seed, raw.always_base)  # type: ignore[arg-type]


def _existing(out: Path) -> SplitManifest | None:
    if not is_artifact(out):
        return None
    try:
        return open_artifact(out, SplitManifest)[0]
    except ArtifactError:
        return None  # a broken or foreign artifact at the output path (missing files too) is simply rebuilt


def run_split(
    *,
    dataset: DatasetName,
    root: Path | None = None,
    out: Path | None = None,
    ratio: str | None = None,
    seed: int | None = None,
    official_split: int | None = None,
    novel_classes: str | None = None,
    keep_train_labels: bool = True,
    synthetic: SyntheticSettings | None = None,
    holdout: int = 0,
    force: bool = False,
    workers: int | None = None,
    reporter: Reporter | None = None,
) -> SplitResult:
    """Make (or confirm up to date) the split artifact at ``out``."""
    reporter = reporter or SilentReporter()
    params = plan_params(dataset=dataset, ratio=ratio, seed=seed, official_split=official_split,
                         novel_classes=novel_classes, keep_train_labels=keep_train_labels, synthetic=synthetic,
                         holdout=holdout)
    out = Path(out) if out is not None else default_split_out(dataset, params)
    existing = _existing(out)
    workers = workers or default_workers()
    if dataset == "synthetic":
        # The generated files are a pure function of the settings, so the params decide freshness.
        if existing is not None and not force and existing.params == params:
            reporter.info(f"{out}: up to date (same settings), skipping; pass --force to rebuild")
            return SplitResult(existing, read_manifest(out, SplitManifest)[1], out, True)
        source = out.absolute().parent / f".{out.name}.synthetic-source"
        check_output_path(out, "split")  # refuse before generating, not after
        try:
            shutil.rmtree(source, ignore_errors=True)
            source.mkdir(parents=True)
        except OSError as exc:
            raise UserError(f"{source.parent}: cannot write here ({exc.strerror}); choose another --out") from None
        try:
            settings = params.synthetic
            assert settings is not None
            with reporter.task("generating synthetic images", settings.train_images + settings.val_images) as advance:
                finished = [0]

                def progress(done: int) -> None:  # the generator reports a running total
                    advance(done - finished[0])
                    finished[0] = done

                generate_synthetic(source, settings, progress, workers=workers)
            raw = load_folder(source)
            return _build(raw, params, out, existing, force, workers, reporter, dataset_root=None)
        except OSError as exc:
            if is_disk_full(exc):
                raise UserError(disk_full_message(out)) from None
            raise
        finally:
            shutil.rmtree(source, ignore_errors=True)
    raw = load_dataset(dataset, root)
    return _build(raw, params, out, existing, force, workers, reporter, dataset_root=str(datasets_root(root).absolute()))


def _build(
    raw: RawDataset,
    params: SplitParams,
    out: Path,
    existing: SplitManifest | None,
    force: bool,
    workers: int,
    reporter: Reporter,
    dataset_root: str | None,
) -> SplitResult:
    raw = hold_out(raw, params.holdout)
    novel = choose_novel(params, raw)
    base = tuple(c for c in range(raw.num_classes) if c not in novel)
    with WorkerPool(workers) as pool:
        sizes: dict[str, np.ndarray] = {}
        digests: list[tuple[str, str]] = []
        total = sum(len(raw.subsets[s]) for s in subsets_of(raw))
        with reporter.task("hashing dataset files", total) as advance:
            for subset in subsets_of(raw):
                sizes[subset], subset_digests = scan(pool, raw.root, raw.subsets[subset], advance)
                digests.extend(subset_digests)
        inputs = Inputs(dataset=DatasetFingerprint(
            name=params.dataset, layout=raw.layout, files=len(set(digests)), digest=files_fingerprint(digests)))
        if existing is not None and not force and same_plan(existing, inputs, params):
            reporter.info(f"{out}: up to date (same dataset files and settings), skipping; pass --force to rebuild")
            return SplitResult(existing, read_manifest(out, SplitManifest)[1], out, True)
        if existing is not None and not force:
            reporter.info(f"{out}: settings or dataset files changed, rebuilding")
        with staged_artifact(out, kind="split") as staging:
            manifest = _ingest(raw, params, novel, base, sizes, inputs, staging, pool, reporter, dataset_root)
            warn_unlearnable_novel(manifest, reporter)
            manifest, digest = publish(staging, out, manifest)
    return SplitResult(manifest, digest, out, False)


def warn_unlearnable_novel(manifest: SplitManifest, reporter: Reporter) -> None:
    """Say so when a novel class has no pixels in any training image: nothing names it there."""
    counts = manifest.summary.train_images_per_class
    absent = [manifest.class_names[c] for c in manifest.novel_classes if counts[c] == 0]
    if absent:
        one = len(absent) == 1
        reporter.info(f"warning: novel class{'' if one else 'es'} {', '.join(absent)} "
                      f"{'has' if one else 'have'} no pixels in any training image; training cannot learn "
                      f"{'it' if one else 'them'} from image-level labels "
                      "(choose novel classes the training images show)")


def _ingest(
    raw: RawDataset,
    params: SplitParams,
    novel: tuple[int, ...],
    base: tuple[int, ...],
    sizes: dict[str, np.ndarray],
    inputs: Inputs,
    staging: Path,
    pool: WorkerPool,
    reporter: Reporter,
    dataset_root: str | None,
) -> SplitManifest:
    num_classes, ignore = raw.num_classes, raw.ignore_index
    label_dtype = str(label_dtype_for(num_classes))
    group = zarr.open_group(store=str(staging), mode="w", zarr_format=3)
    arrays: dict[str, ArraySpec] = {}
    layouts = {subset: plan_layout(subset, sizes[subset]) for subset in subsets_of(raw)}
    for subset, layout in layouts.items():
        specs = create_arrays(group, layout, num_classes=num_classes, label_dtype=label_dtype, ignore_index=ignore,
                              audit=subset == "train" and params.keep_train_labels)
        arrays.update({path: ArraySpec(shape=shape, dtype=dtype) for path, (shape, dtype) in specs.items()})
    subset_summaries: dict[str, SubsetSummary] = {}
    image_counts = np.zeros(num_classes, dtype=np.int64)
    val_pixels = np.zeros(num_classes, dtype=np.int64)
    for subset, layout in layouts.items():
        samples = raw.subsets[subset]
        tasks = [
            ShardTask(staging=staging, root=raw.root, layout=layout, start=r.start,
                      samples=tuple(samples[r.start:r.stop]), lut=raw.lut, ignore_index=ignore,
                      num_classes=num_classes, novel_classes=novel, expected_sizes=sizes[subset][r.start:r.stop],
                      keep_audit=params.keep_train_labels)
            for r in layout.shard_ranges()
        ]
        with reporter.task(f"ingesting {subset} images", len(samples)) as advance:
            results = ingest_subset(pool, tasks, advance)
        image_labels = np.concatenate([r.image_labels for r in results])
        pixel_counts = np.sum([r.pixel_counts for r in results], axis=0)
        group[f"{subset}/sizes"][...] = sizes[subset]
        group[f"{subset}/image_labels"][...] = image_labels
        group[subset].attrs["names"] = [sample.name for sample in samples]
        total = int(pixel_counts.sum())
        subset_summaries[subset] = SubsetSummary(
            images=len(samples), canvas=layout.canvas, pixels=total,
            base_share=round(float(pixel_counts[list(base)].sum()) / total, 6),
            novel_share=round(float(pixel_counts[list(novel)].sum()) / total, 6),
            ignore_share=round(float(pixel_counts[-1]) / total, 6),
        )
        if subset == "train":
            image_counts = image_labels.sum(axis=0)
        elif subset == "val":
            val_pixels = pixel_counts[:num_classes]
    return SplitManifest(
        inputs=inputs,
        arrays=arrays,
        provenance=Provenance(command=list(sys.argv), dataset_root=dataset_root, host=socket.gethostname()),
        params=params,
        summary=SplitSummary(subsets=subset_summaries, train_images_per_class=[int(v) for v in image_counts],
                             val_pixels_per_class=[int(v) for v in val_pixels]),
        class_names=list(raw.class_names),
        base_classes=list(base),
        novel_classes=list(novel),
        ignore_index=ignore,
        label_dtype=label_dtype,  # type: ignore[arg-type]
    )
