"""Inference speed: images/s of `infer` on a synthetic validation set.

Trains a model for a few steps (speed does not depend on how well it is trained), then times
`run_infer` on 300 synthetic validation images, single scale and with multi-scale + flip. Usage::

    python benchmarks/infer_speed.py --out BENCHMARKS.md                      # tiny preset, CPU, 128x128
    python benchmarks/infer_speed.py --preset paper --image-size 512 --device cuda --out BENCHMARKS.md
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
    parser.add_argument("--preset", choices=["tiny", "paper"], default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--image-size", type=int, default=128, help="side of the synthetic images")
    parser.add_argument("--images", type=int, default=300, help="validation images to predict")
    args = parser.parse_args()
    options = "".join(f" --{name} {value}" for name, value, default in (
        ("preset", args.preset, "tiny"), ("device", args.device, "cpu"), ("image-size", args.image_size, 128),
        ("images", args.images, 300)) if value != default)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        split = run_split(dataset="synthetic", out=tmp_path / "split.zarr",
                          synthetic=SyntheticSettings(train_images=64, val_images=args.images, test_images=0,
                                                      image_size=args.image_size)).path
        model = run_train(split=split, out=tmp_path / "model.zarr", preset=args.preset, iters=2,
                          device=args.device).path
        for label, scales, flip in (("single scale", (1.0,), False), ("scales 0.75,1,1.25 + flip", (0.75, 1.0, 1.25), True)):
            began = time.perf_counter()
            result = run_infer(model=model, split=split, out=tmp_path / f"pred-{len(rows)}.zarr", scales=scales,
                               flip=flip, device=args.device)
            seconds = time.perf_counter() - began
            images = result.manifest.summary.images
            rows.append(f"| {label} | {images} | {seconds:.1f} | {images / seconds:.1f} |")
    lines = [
        f"## Inference ({args.preset} preset, {'GPU' if args.device == 'cuda' else 'CPU'})",
        "",
        f"Command: `python benchmarks/infer_speed.py{options}`  ",
        f"Machine: {machine_line()}. {args.images} synthetic validation images of {args.image_size}x{args.image_size}"
        f", up to {BATCH_IMAGES} images of one size per forward pass with all their views, label maps written to "
        "the predictions artifact" + (", bf16 autocast as `infer` uses on a GPU." if args.device == "cuda" else "."),
        "",
        "| test-time views | images | seconds | images/s |",
        "|---|---|---|---|",
        *rows,
    ]
    section = "infer_speed" + ("" if args.preset == "tiny" else f"_{args.preset}") + ("_cuda" if args.device == "cuda" else "")
    publish(lines, args.out, section)


if __name__ == "__main__":
    main()
