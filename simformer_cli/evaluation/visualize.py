"""Pictures for people: coloured label maps, image | ground truth | prediction triptychs, and a
per-class IoU bar chart. OpenCV only (no plotting library), so it works in the slim install.

Every array here is RGB uint8; OpenCV itself works in BGR, so the only conversion is in
:func:`write_png`. Ignore pixels are drawn black (other values that are not a class id white),
which is why the palette never hands out black, white or near-black colours.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from simformer_cli.artifacts.metrics import EvalReport
from simformer_cli.evaluation.metrics import summary_line

FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.5
TEXT_ROW = 22  # pixel height of one line of text at FONT_SCALE, with spacing
BLACK = (0, 0, 0)
WHITE = (255, 255, 255)
GRID = (215, 215, 215)
MUTED = (120, 120, 120)
MIOU_LINE = (200, 30, 30)
# Palette candidates: a 16-level RGB grid. Picking greedily the candidate farthest (in CIELAB,
# which tracks perceived difference) from everything picked so far spreads any number of classes
# as far apart as the grid allows, and makes the colour of class c independent of K.
_LEVELS = 16


def palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 RGB colours, deterministic, each as far as possible from the ones before it
    and from black (ignore) and white (not a class). Beyond 4094 classes colours repeat."""
    grid = np.round(np.linspace(0, 255, _LEVELS)).astype(np.uint8)
    candidates = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), axis=-1).reshape(-1, 3)
    lab = cv2.cvtColor(candidates[:, None, :].astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)[:, 0, :]
    reserved = cv2.cvtColor(np.array([[BLACK], [WHITE]], dtype=np.float32) / 255.0, cv2.COLOR_RGB2Lab)[:, 0, :]
    nearest = np.linalg.norm(lab[:, None, :] - reserved[None, :, :], axis=2).min(axis=1)
    chosen = np.empty(num_classes, dtype=np.int64)
    for i in range(num_classes):
        chosen[i] = int(np.argmax(nearest))
        nearest = np.minimum(nearest, np.linalg.norm(lab - lab[chosen[i]], axis=1))
    return candidates[chosen]


def colorize(label: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(H, W) label map -> (H, W, 3) RGB. Ignore is black; any other value that is not a class id
    is white, so a stray value (a bug upstream) stands out instead of passing for ignore."""
    label = np.asarray(label)
    valid = (label >= 0) & (label < len(palette))
    out = np.full((*label.shape, 3), 255, dtype=np.uint8)
    out[label == ignore_index] = BLACK
    out[valid] = palette[label[valid]]
    return out


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.ascontiguousarray(image[:, :, :3])
    raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}")


def _text(canvas: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int] = BLACK) -> None:
    """Draw text with its baseline at y (anti-aliased, so it stays legible at small scale)."""
    cv2.putText(canvas, text, (x, y), FONT, FONT_SCALE, color, 1, cv2.LINE_AA)


def _text_width(text: str) -> int:
    return cv2.getTextSize(text, FONT, FONT_SCALE, 1)[0][0]


def _legend(entries: list[tuple[str, tuple[int, int, int]]], width: int) -> np.ndarray:
    """White strip of swatch + name entries, flowing left to right and wrapping at ``width``."""
    swatch, gap, margin = 14, 18, 8
    placed, x, row = [], margin, 0
    for name, color in entries:
        entry_width = swatch + 6 + _text_width(name)
        if x + entry_width > width - margin and x > margin:
            x, row = margin, row + 1
        placed.append((x, row, name, color))
        x += entry_width + gap
    strip = np.full((margin * 2 + (row + 1) * TEXT_ROW, width, 3), 255, dtype=np.uint8)
    for x, row, name, color in placed:
        top = margin + row * TEXT_ROW + (TEXT_ROW - swatch) // 2
        cv2.rectangle(strip, (x, top), (x + swatch, top + swatch), tuple(int(v) for v in color), -1)
        cv2.rectangle(strip, (x, top), (x + swatch, top + swatch), MUTED, 1)
        _text(strip, name, x + swatch + 6, top + swatch - 2)
    return strip


def overlay_triptych(
    image: np.ndarray,
    ground_truth: np.ndarray | None,
    prediction: np.ndarray,
    class_names: Sequence[str],
    palette: np.ndarray,
    ignore_index: int = 255,
    *,
    alpha: float = 0.55,
    min_height: int = 256,
) -> np.ndarray:
    """image | ground truth overlay | prediction overlay (or image | prediction without ground
    truth), titled, with a legend of the classes present in either label map.

    Small inputs are enlarged by a whole factor to at least ``min_height`` so that labels stay
    crisp and the text stays readable next to them.
    """
    rgb = _as_rgb(image)
    labels = [("ground truth", ground_truth)] if ground_truth is not None else []
    labels.append(("prediction", np.asarray(prediction)))
    for title, label in labels:
        if np.asarray(label).shape != rgb.shape[:2]:
            raise ValueError(f"{title} shape {np.asarray(label).shape} does not match image {rgb.shape[:2]}")
    factor = max(1, -(-min_height // rgb.shape[0]))
    height, width = rgb.shape[0] * factor, rgb.shape[1] * factor
    base = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR) if factor > 1 else rgb
    panels = [("image", base)]
    values: set[int] = set()
    for title, label in labels:
        label = np.asarray(label)
        values.update(int(v) for v in np.unique(label))
        big = np.repeat(np.repeat(label, factor, axis=0), factor, axis=1) if factor > 1 else label
        blended = cv2.addWeighted(base, 1.0 - alpha, colorize(big, palette, ignore_index), alpha, 0.0)
        panels.append((title, blended))

    gap = 6
    total_width = len(panels) * width + (len(panels) - 1) * gap
    body = np.full((TEXT_ROW + 6 + height, total_width, 3), 255, dtype=np.uint8)
    for i, (title, panel) in enumerate(panels):
        left = i * (width + gap)
        _text(body, title, left + 4, TEXT_ROW - 4)
        body[TEXT_ROW + 6 :, left : left + width] = panel
    classes = sorted(v for v in values if 0 <= v < len(class_names))
    entries = [(f"{c} {class_names[c]}", tuple(int(x) for x in palette[c])) for c in classes]
    if ignore_index in values:
        entries.append((f"ignore ({ignore_index})", BLACK))
    strays = sorted(v for v in values if v != ignore_index and not 0 <= v < len(class_names))
    if strays:
        entries.append(("not a class: " + ", ".join(map(str, strays[:5])), WHITE))
    return np.vstack([body, _legend(entries, total_width)])


def iou_bar_chart(
    report: EvalReport,
    base_color: tuple[int, int, int] = (31, 119, 180),
    novel_color: tuple[int, int, int] = (255, 127, 14),
) -> np.ndarray:
    """Horizontal bar per class (id order), coloured by base/novel, 0-100 % axis, the headline
    figures as title. The height grows with the class count, so 150+ classes stay legible."""
    row, bar, margin, bar_area = 18, 12, 12, 480
    names = [f"{r.id} {r.name[:28]}" for r in report.per_class]
    label_width = max((_text_width(n) for n in names), default=0) + 12
    value_width = _text_width("100.00") + 12
    title = summary_line(report)
    counts = {role: sum(r.split_role == role for r in report.per_class) for role in ("base", "novel")}
    keys = [(f"base ({counts['base']})", base_color), (f"novel ({counts['novel']})", novel_color)]
    note = "IoU per class, %; red line = mIoU; n/a = absent from GT and prediction"
    legend_width = sum(20 + _text_width(text) + 24 for text, _ in keys) + _text_width(note)
    width = margin * 2 + max(label_width + bar_area + value_width, _text_width(title), legend_width)
    top = margin + 3 * TEXT_ROW + 8  # title, legend, axis ticks
    height = top + len(report.per_class) * row + margin
    chart = np.full((height, width, 3), 255, dtype=np.uint8)

    _text(chart, title, margin, margin + TEXT_ROW - 6)
    legend_y = margin + 2 * TEXT_ROW - 6
    x = margin
    for text, color in keys:
        cv2.rectangle(chart, (x, legend_y - 11), (x + 14, legend_y + 1), tuple(int(v) for v in color), -1)
        _text(chart, text, x + 20, legend_y)
        x += 20 + _text_width(text) + 24
    _text(chart, note, x, legend_y, MUTED)

    left = margin + label_width
    for tick in (0, 25, 50, 75, 100):
        tx = left + tick * bar_area // 100
        cv2.line(chart, (tx, top - 4), (tx, height - margin), GRID, 1)
        _text(chart, str(tick), tx - _text_width(str(tick)) // 2, top - 8, MUTED)
    # The headline mIoU as a reference line, drawn before the bars so their figures stay on top.
    mx = left + int(round(report.miou / 100.0 * bar_area))
    cv2.line(chart, (mx, top - 4), (mx, height - margin), MIOU_LINE, 1)
    for i, result in enumerate(report.per_class):
        y = top + i * row
        _text(chart, names[i], left - 8 - _text_width(names[i]), y + row - 5)
        if result.iou is None:
            _text(chart, "n/a", left + 4, y + row - 5, MUTED)
            continue
        color = base_color if result.split_role == "base" else novel_color
        end = left + int(round(result.iou / 100.0 * bar_area))
        if end > left:
            cv2.rectangle(chart, (left, y + (row - bar) // 2), (end, y + (row + bar) // 2), tuple(int(v) for v in color), -1)
        _text(chart, f"{result.iou:.2f}", end + 4, y + row - 5)
    return chart


def encode_png(image: np.ndarray) -> bytes:
    """An RGB (or grey) uint8 image as the bytes of a PNG file."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"PNG images here are uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim != 2:
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError("could not encode the image as PNG")
    return encoded.tobytes()


def write_png(path: Path | str, image: np.ndarray) -> Path:
    """Write an RGB (or grey) uint8 image as PNG, creating the folder; returns the path."""
    path = Path(path)
    data = encode_png(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    # imencode + write_bytes rather than imwrite: imwrite fails silently on some paths.
    path.write_bytes(data)
    return path
