"""Evaluation: streaming confusion matrix, mIoU report in both conventions, pictures."""

from simformer_cli.artifacts.metrics import ClassResult, EvalReport
from simformer_cli.evaluation.confusion import ConfusionMatrix
from simformer_cli.evaluation.metrics import REPORT_COLUMNS, compute_report, format_report_rows, summary_line
from simformer_cli.evaluation.visualize import (
    colorize,
    encode_png,
    iou_bar_chart,
    overlay_triptych,
    palette,
    write_png,
)

__all__ = [
    "REPORT_COLUMNS",
    "ClassResult",
    "ConfusionMatrix",
    "EvalReport",
    "colorize",
    "compute_report",
    "encode_png",
    "format_report_rows",
    "iou_bar_chart",
    "overlay_triptych",
    "palette",
    "summary_line",
    "write_png",
]
