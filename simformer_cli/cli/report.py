"""Short human summaries printed at the end of a stage (stderr)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from simformer_cli.cli.console import stderr

if TYPE_CHECKING:
    from simformer_cli.artifacts.split import SplitManifest


def _names(manifest: SplitManifest, ids: list[int], limit: int = 12) -> str:
    names = [manifest.class_names[i] for i in ids]
    more = f", ... (+{len(names) - limit})" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def print_split_summary(manifest: SplitManifest, path: Path, digest: str) -> None:
    table = Table(title=f"split {path}", title_justify="left")
    for column in ("subset", "images", "canvas", "base px", "novel px", "ignore px"):
        table.add_column(column, justify="right" if column != "subset" else "left")
    for subset, info in manifest.summary.subsets.items():
        table.add_row(subset, str(info.images), f"{info.canvas[0]}x{info.canvas[1]}",
                      f"{info.base_share:.1%}", f"{info.novel_share:.1%}", f"{info.ignore_share:.1%}")
    stderr.print(table)
    stderr.print(f"classes: {len(manifest.class_names)} ({len(manifest.base_classes)} base, "
                 f"{len(manifest.novel_classes)} novel)", markup=False)
    stderr.print(f"novel: {_names(manifest, manifest.novel_classes)}", markup=False)
    stderr.print(f"digest: {digest}", markup=False)


def print_eval_report(report, path: Path, max_rows: int = 40) -> None:  # noqa: ANN001
    """Per-class rows (best first, base/novel marked), then the headline figures."""
    from simformer_cli.evaluation import REPORT_COLUMNS, format_report_rows, summary_line

    rows = format_report_rows(report)
    table = Table(title=f"eval {path}", title_justify="left")
    for column in REPORT_COLUMNS:
        table.add_column(column, justify="left" if column in ("class", "role") else "right")
    for row in rows[:max_rows]:
        table.add_row(*row)
    if len(rows) > max_rows:
        table.add_row("...", f"({len(rows) - max_rows} more rows in the JSON report)", *[""] * (len(REPORT_COLUMNS) - 2))
    stderr.print(table)
    for warning in report.warnings:
        stderr.print(f"warning: {warning}", markup=False)
    novel = report.novel
    if novel is not None and len(novel.confusion) <= 12:
        names = list(novel.confusion[0].as_novel)
        table = Table(title="novel classes: share of each one's pixels predicted as (%)", title_justify="left")
        for column in ("class", *names, "any base", "nothing"):
            table.add_column(column, justify="left" if column == "class" else "right")
        for row in novel.confusion:
            table.add_row(row.name, *(f"{row.as_novel[name]:.1f}" for name in names), f"{row.as_base:.1f}",
                          f"{row.as_nothing:.1f}")
        stderr.print(table)
    stderr.print(summary_line(report), markup=False)
    boundary = report.boundary
    if boundary is not None:
        shown = " ".join(f"{name} {value:.2f}" for name, value in (("mIoU", boundary.miou), ("base", boundary.base_miou),
                                                                  ("novel", boundary.novel_miou)) if value is not None)
        stderr.print(f"within {boundary.width} px of label edges ({boundary.pixels} pixels): {shown}", markup=False)
    if novel is not None:
        stderr.print(f"novel classes found (IoU of their union) {novel.union_iou:.2f}; novel mIoU under the best "
                     f"renaming of predicted novel classes {novel.renamed_miou:.2f}", markup=False)


def print_pipeline_table(one_stage, retrained, pseudo_novel_miou, workdir: Path) -> None:  # noqa: ANN001
    """One-stage vs retrained: all / base / novel mIoU and hIoU (SimFormer's convention)."""
    table = Table(title=f"pipeline {workdir} (val, %)", title_justify="left")
    for column in ("model", "mIoU", "base", "novel", "hIoU", "mIoU present-only", "novel found", "novel renamed"):
        table.add_column(column, justify="left" if column == "model" else "right")

    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    for name, report in (("SimFormer one-stage", one_stage), ("+ pseudo-label retraining", retrained)):
        novel = report.novel
        table.add_row(name, cell(report.miou), cell(report.base_miou), cell(report.novel_miou), cell(report.hiou),
                      cell(report.miou_present_only), cell(novel.union_iou if novel else None),
                      cell(novel.renamed_miou if novel else None))
    stderr.print(table)
    from simformer_cli.pipeline.evaluate import NOVEL_NOT_SCORED

    for warning in dict.fromkeys(w for r in (one_stage, retrained) for w in r.warnings if w.startswith(NOVEL_NOT_SCORED)):
        stderr.print(f"warning: {warning}", markup=False)
    if pseudo_novel_miou is not None:
        stderr.print(f"pseudo labels on train: novel mIoU {pseudo_novel_miou:.2f} against the full train labels",
                     markup=False)
