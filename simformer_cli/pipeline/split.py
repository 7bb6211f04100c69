"""The ``split`` stage: a raw dataset (or the synthetic generator) -> a split artifact."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simformer_cli.artifacts.digest import files_fingerprint
from simformer_cli.artifacts.manifest import DatasetFingerprint, Inputs, LabelFile, LabelSources, Provenance
from simformer_cli.artifacts.split import SplitManifest, SplitParams, SplitSummary
from simformer_cli.artifacts.store import (
    check_output_path,
    disk_full_message,
    is_artifact,
    is_disk_full,
    open_artifact,
    publish,
    read_manifest,
    same_plan,
    staged_artifact,
)
from simformer_cli.data.class_split import choose_novel, parse_ratio
from simformer_cli.data.datasets import DATASETS, DataSources, datasets_root, load_dataset
from simformer_cli.data.ingest import WorkerPool, default_workers, file_sha256, ingest, scan
from simformer_cli.data.official_splits import PUBLISHED_SPLITS, official_novel_classes
from simformer_cli.data.source import RawDataset, hold_out, subsets_of
from simformer_cli.data.synthetic import GENERATOR_VERSION, generate_synthetic
from simformer_cli.data.tags import TagFile, apply_tags, read_tags
from simformer_cli.errors import ArtifactError, UserError
from simformer_cli.pipeline.stage import StageResult
from simformer_cli.progress import Reporter, SilentReporter
from simformer_cli.settings.labels import label_dtype_for
from simformer_cli.settings.synthetic import SyntheticSettings


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
    dataset: str,
    ratio: str | None,
    seed: int | None,
    official_split: int | None,
    novel_classes: str | None,
    keep_train_labels: bool,
    synthetic: SyntheticSettings | None,
    holdout: int = 0,
    tags: TagFile | None = None,
    tagged_novel: tuple[str, ...] = (),
) -> SplitParams:
    """Check the class-selection options and fill in defaults (3:1, seed 0). With ``tags`` the
    novel classes are the ``tagged_novel`` ones, and there are no full train labels to keep."""
    chosen = [name for name, value in (("--ratio/--seed", ratio is not None or seed is not None),
                                       ("--official-split", official_split is not None),
                                       ("--novel-classes", novel_classes is not None),
                                       ("--tags", tags is not None)) if value]
    if len(chosen) > 1:
        raise UserError(f"{' and '.join(chosen)} both choose the novel classes; pass only one of them")
    is_synthetic = DATASETS[dataset].generated
    if holdout < 0:
        raise UserError(f"--holdout {holdout}: expected 0 or more training images to hold out")
    common = {"dataset": dataset, "keep_train_labels": keep_train_labels, "holdout": holdout,
              "synthetic": (synthetic or SyntheticSettings()) if is_synthetic else None,
              "synthetic_generator_version": GENERATOR_VERSION if is_synthetic else None}
    if official_split is not None:
        if dataset not in PUBLISHED_SPLITS:
            raise UserError(f"--official-split: only {' and '.join(PUBLISHED_SPLITS)} have published splits, not {dataset}")
        official_novel_classes(dataset, official_split)  # validates the number
        return SplitParams(selection="official", official_split=official_split, **common)
    if tags is not None:
        return SplitParams(selection="tags", requested_novel=list(tagged_novel), **dict(common, keep_train_labels=False))
    if novel_classes is not None:
        names = [item.strip() for item in novel_classes.split(",") if item.strip()]
        return SplitParams(selection="explicit", requested_novel=names, **common)
    return SplitParams(selection="ratio", ratio=parse_ratio("3:1" if ratio is None else ratio), seed=seed or 0, **common)


def _existing(out: Path) -> SplitManifest | None:
    if not is_artifact(out):
        return None
    try:
        return open_artifact(out, SplitManifest)[0]
    except ArtifactError:
        return None  # a broken or foreign artifact at the output path (missing files too) is simply rebuilt


def run_split(
    *,
    dataset: str,
    root: Path | None = None,
    out: Path | None = None,
    ratio: str | None = None,
    seed: int | None = None,
    official_split: int | None = None,
    novel_classes: str | None = None,
    keep_train_labels: bool = True,
    synthetic: SyntheticSettings | None = None,
    holdout: int = 0,
    tags: Path | None = None,
    images: Path | None = None,
    annotations: Path | None = None,
    val_annotations: Path | None = None,
    force: bool = False,
    workers: int | None = None,
    reporter: Reporter | None = None,
) -> StageResult[SplitManifest]:
    """Make (or confirm up to date) the split artifact at ``out``. With ``tags`` (a tag file,
    ``data.tags``) the masks hold the base classes and the tags name the novel ones."""
    if dataset not in DATASETS:
        raise UserError(f"--dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    reporter = reporter or SilentReporter()
    if tags is not None and not DATASETS[dataset].takes_tags:
        takers = [name for name, entry in DATASETS.items() if entry.takes_tags]
        raise UserError(f"--tags: --dataset {dataset} has masks of every class; tags go with {' or '.join(takers)}")
    sources = DataSources(root=root, images=images, annotations=annotations, val_annotations=val_annotations,
                          masks_optional=tags is not None)
    own = own_data(dataset, sources, Path(tags)) if tags is not None else None
    params = plan_params(dataset=dataset, ratio=ratio, seed=seed, official_split=official_split,
                         novel_classes=novel_classes, keep_train_labels=keep_train_labels, synthetic=synthetic,
                         holdout=holdout, tags=own.tags if own else None,
                         tagged_novel=own.novel_names if own else ())
    out = Path(out) if out is not None else default_split_out(dataset, params)
    existing = _existing(out)
    workers = workers or default_workers()
    if DATASETS[dataset].generated:
        # The generated files are a pure function of the settings, so the params decide freshness.
        if existing is not None and not force and existing.params == params:
            reporter.info(f"{out}: up to date (same settings), skipping; pass --force to rebuild")
            return StageResult(existing, read_manifest(out, SplitManifest)[1], out, True)
        # The generated files go to a folder of this process's own: a second split of the same
        # --out generates beside it and is refused when it comes to write (the artifact's lock).
        source = out.absolute().parent / f".{out.name}.synthetic-source-{os.getpid()}"
        check_output_path(out, "split")  # refuse before generating, not after
        try:
            remove_dead_sources(out)
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
            raw = load_dataset(dataset, DataSources(root=source))
            return _build(raw, params, out, existing, force, workers, reporter, dataset_root=None)
        except OSError as exc:
            if is_disk_full(exc):
                raise UserError(disk_full_message(out)) from None
            raise
        finally:
            shutil.rmtree(source, ignore_errors=True)
    raw = own.raw if own is not None else load_dataset(dataset, sources)
    where = raw.root if DATASETS[dataset].load_files is not None else datasets_root(root)
    return _build(raw, params, out, existing, force, workers, reporter, dataset_root=str(where.absolute()), own=own)


def remove_dead_sources(out: Path) -> None:
    """Delete the generated-source folders that splits killed outright (SIGKILL) left beside
    ``out``: those whose process is gone."""
    pattern = re.compile(re.escape(f".{out.name}.synthetic-source-") + r"(\d+)")
    parent = out.absolute().parent
    if not parent.is_dir():
        return
    for path in parent.iterdir():
        match = pattern.fullmatch(path.name)
        if match and path.is_dir() and not path.is_symlink() and not process_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


@dataclass(frozen=True)
class OwnData:
    """A dataset with base masks and tags: the tagged dataset, its tag file, and per subset what the
    masks hold."""

    raw: RawDataset
    tags: TagFile
    novel_names: tuple[str, ...]
    coverage: dict[str, str]


def own_data(dataset: str, sources: DataSources, tags: Path) -> OwnData:
    tag_file = read_tags(tags)
    raw = load_dataset(dataset, sources)
    tagged, novel, coverage = apply_tags(raw, tag_file)
    return OwnData(tagged, tag_file, tuple(raw.class_names[c] for c in novel), coverage)


def label_sources(raw: RawDataset, own: OwnData | None, label_digests: dict[str, str]) -> LabelSources:
    masks = "COCO JSON annotations" if raw.layout == "coco-json" else f"{raw.layout} label maps"
    files = [LabelFile(role=role, path=str(path.absolute()), sha256=label_digests[role])  # type: ignore[arg-type]
             for role, path in raw.label_files.items()]
    if own is None:
        return LabelSources(base_masks=masks, novel_labels="derived from full masks", files=files)
    return LabelSources(base_masks=masks, novel_labels="tags",
                        files=[*files, LabelFile(role="tags", path=str(own.tags.path.absolute()), sha256=own.tags.digest)])


def _build(
    raw: RawDataset,
    params: SplitParams,
    out: Path,
    existing: SplitManifest | None,
    force: bool,
    workers: int,
    reporter: Reporter,
    dataset_root: str | None,
    own: OwnData | None = None,
) -> StageResult[SplitManifest]:
    raw = hold_out(raw, params.holdout)
    coverage = None
    if own is not None:
        coverage = dict(own.coverage, **({"holdout": own.coverage["train"]} if "holdout" in raw.subsets else {}))
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
        # By role, not path: moving a label file does not make the split stale.
        label_digests = {role: file_sha256(path) for role, path in raw.label_files.items()}
        digests.extend((f"--{role}", digest) for role, digest in label_digests.items())
        if own is not None:
            digests.append(("--tags", own.tags.digest))
        inputs = Inputs(dataset=DatasetFingerprint(
            name=params.dataset, layout=raw.layout, files=len(set(digests)), digest=files_fingerprint(digests)))
        if existing is not None and not force and same_plan(existing, inputs, params):
            reporter.info(f"{out}: up to date (same dataset files and settings), skipping; pass --force to rebuild")
            return StageResult(existing, read_manifest(out, SplitManifest)[1], out, True)
        if existing is not None and not force:
            reporter.info(f"{out}: settings or dataset files changed, rebuilding")
        with staged_artifact(out, kind="split") as staging:
            ingested = ingest(raw, novel, sizes, staging, pool, reporter, keep_audit=params.keep_train_labels,
                              coverage=coverage)
            manifest = SplitManifest(
                inputs=inputs, arrays=ingested.arrays,
                provenance=Provenance.of_this_run(dataset_root, label_sources(raw, own, label_digests)),
                label_coverage=settled_coverage(coverage, ingested.summary, novel),  # type: ignore[arg-type]
                category_ids=list(raw.category_ids) if raw.category_ids is not None else None,
                params=params, summary=ingested.summary, class_names=list(raw.class_names),
                base_classes=list(base), novel_classes=list(novel), ignore_index=raw.ignore_index,
                label_dtype=str(label_dtype_for(raw.num_classes)),  # type: ignore[arg-type]
            )
            warn_unlearnable_novel(manifest, reporter)
            manifest, digest = publish(staging, out, manifest)
    return StageResult(manifest, digest, out)


def settled_coverage(coverage: dict[str, str] | None, summary: SplitSummary,
                     novel: tuple[int, ...]) -> dict[str, str] | None:
    """Masks of a subset without tag rows hold every class; where they hold no pixel of any novel
    class, they are base masks in fact (an export of the base classes only), and say so."""
    if coverage is None:
        return None
    return {subset: "base" if kind == "full" and summary.subsets[subset].novel_share == 0 else kind
            for subset, kind in coverage.items()}


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


