"""Inference speed of the tiny preset on CPU: images/s of `infer` on the synthetic validation set.

Trains a tiny model for a few steps (speed does not depend on how well it is trained), then times
`run_infer` on the 300 validation images of the synthetic default, single scale and with
multi-scale + flip. Usage::

    python benchmarks/infer_speed.py --out BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _tables import machine_line, publish  # noqa: E402

from simformer_cli.inference.predict import BATCH_IMAGES  # noqa: E402
from simformer_cli.settings.synthetic import SyntheticSettings  # noqa: E402
from simformer_cli.pipeline.infer import run_infer  # noqa: E402
from simformer_cli.pipeline.split import run_split  # noqa: E402
from simformer_cli.pipeline.train import run_train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        split = run_split(dataset="synthetic", out=tmp_path / "split.zarr",
                          synthetic=SyntheticSettings(train_images=64, val_images=300)).path
        model = run_train(split=split, out=tmp_path / "model.zarr", iters=2, device="cpu").path
        for label, scales, flip in (("single scale", (1.0,), False), ("scales 0.75,1,1.25 + flip", (0.75, 1.0, 1.25), True)):
            began = time.perf_counter()
            result = run_infer(model=model, split=split, out=tmp_path / f"pred-{len(rows)}.zarr", scales=scales,
                               flip=flip, device="cpu")
            seconds = time.perf_counter() - began
            images = result.manifest.summary.images
            rows.append(f"| {label} | {images} | {seconds:.1f} | {images / seconds:.1f} |")
    lines = [
        "## Inference (tiny preset, CPU)",
        "",
        "Command: `python benchmarks/infer_speed.py`  ",
        f"Machine: {machine_line()}. 300 synthetic validation images of 128x128, up to "
        f"{BATCH_IMAGES} images of one size per forward pass with all their views, label maps written to the "
        "predictions artifact.",
        "",
        "| test-time views | images | seconds | images/s |",
        "|---|---|---|---|",
        *rows,
    ]
    publish(lines, args.out, "infer_speed")


if __name__ == "__main__":
    main()
