"""The picture of synthetic training samples in the README (docs/synthetic.png): training images
over their colour-coded labels. Usage::

    python benchmarks/synthetic_preview.py [--out docs/synthetic.png]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import cv2
import numpy as np

from simformer_cli.data.synthetic import generate_synthetic
from simformer_cli.settings.synthetic import SyntheticSettings


def render_preview(dataset_dir: Path, out_png: Path, count: int = 6) -> None:
    """Training images over their colour-coded labels (ignore in black), with a class legend."""
    dataset_dir = Path(dataset_dir)
    names = json.loads((dataset_dir / "classes.json").read_text())["classes"]
    files = sorted((dataset_dir / "images" / "train").glob("*.png"))[:count]
    if not files:
        raise SystemExit(f"{dataset_dir}: no training images to preview")
    hues = np.array([[[(k * 0.618034 % 1.0) * 180, 200, 235] for k in range(len(names))]], dtype=np.uint8)
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(names)] = cv2.cvtColor(hues, cv2.COLOR_HSV2BGR)[0]
    palette[0] = (96, 96, 96)
    tile, gap = 128, 4
    images, labels = [], []
    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        label = cv2.imread(str(dataset_dir / "labels" / "train" / path.name), cv2.IMREAD_UNCHANGED)
        if image is None or label is None:
            raise SystemExit(f"{path}: image or its label cannot be read; regenerate the dataset")
        images.append(cv2.resize(image, (tile, tile), interpolation=cv2.INTER_NEAREST))
        labels.append(cv2.resize(palette[label], (tile, tile), interpolation=cv2.INTER_NEAREST))
    width = len(files) * (tile + gap) + gap
    columns = max(1, width // 190)
    legend_rows = -(-len(names) // columns)
    canvas = np.full((2 * tile + 3 * gap + legend_rows * 16 + gap, width, 3), 255, dtype=np.uint8)
    for i, (image, label) in enumerate(zip(images, labels)):
        x = gap + i * (tile + gap)
        canvas[gap : gap + tile, x : x + tile] = image
        canvas[2 * gap + tile : 2 * gap + 2 * tile, x : x + tile] = label
    for k, name in enumerate(names):
        x = gap + (k % columns) * 190
        y = 3 * gap + 2 * tile + (k // columns) * 16
        cv2.rectangle(canvas, (x, y + 2), (x + 11, y + 13), tuple(int(c) for c in palette[k]), -1)
        cv2.putText(canvas, f"{k} {name}", (x + 16, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_png), canvas):
        raise SystemExit(f"{out_png}: cannot write the preview image")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/synthetic.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate_synthetic(Path(tmp), SyntheticSettings(train_images=6, val_images=1, test_images=0), workers=0)
        render_preview(Path(tmp), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
