"""The whole chain on a real dataset turned into what a user has: base masks as COCO JSON, the
novel classes as tags, val without novel masks; ending in exported predictions.

Converts a folder dataset with full masks (``--root``) into ``WORKDIR/data``: ``train.json`` and
``val.json`` (every category listed, ids 1, 3, 5, ... so they are not contiguous; one compressed
RLE per image and base class; novel classes never annotated) and ``tags.csv`` (the novel classes
each training image shows). Then runs ``simformer pipeline --dataset coco-json ... --tags`` and
``simformer export`` (coco and png), and prints what they gave. Usage::

    OMP_NUM_THREADS=1 python benchmarks/own_data_chain.py --root ../shared/data/camvid \\
        --novel car,pedestrian,bicyclist --workdir runs/camvid-own --iters 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

REPO = Path(__file__).resolve().parents[1]


def simformer(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "simformer_cli", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"simformer {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done


def convert(root: Path, novel: list[str], out: Path) -> dict[str, Path]:
    """Base masks as COCO JSON per subset, tags of the training images; images are linked, not copied."""
    spec = json.loads((root / "classes.json").read_text())
    names = spec["classes"]
    novel_ids = {names.index(n) for n in novel}
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "images").exists():
        (out / "images").symlink_to((root / "images").absolute())
    categories = [{"id": 1 + 2 * c, "name": n} for c, n in enumerate(names)]
    tags = ["image,labels"]
    annotation_id = 1
    for subset in ("train", "val"):
        images, annotations = [], []
        for image_id, label_path in enumerate(sorted((root / "labels" / subset).glob("*.png")), start=1):
            label = np.asarray(Image.open(label_path))
            image = next((root / "images" / subset).glob(f"{label_path.stem}.*"))
            images.append({"id": image_id, "file_name": f"{subset}/{image.name}", "height": int(label.shape[0]),
                           "width": int(label.shape[1])})
            present = set(np.unique(label).tolist())
            for class_id in sorted(present - novel_ids - {spec.get("ignore_index", 255)}):
                rle = mask_utils.encode(np.asfortranarray(label == class_id, dtype=np.uint8))
                annotations.append({"id": annotation_id, "image_id": image_id, "category_id": 1 + 2 * class_id,
                                    "iscrowd": 0, "area": int((label == class_id).sum()),
                                    "segmentation": {"size": [int(v) for v in rle["size"]],
                                                     "counts": rle["counts"].decode("ascii")}})
                annotation_id += 1
            if subset == "train":
                tags.append(f"{label_path.stem},{';'.join(names[c] for c in sorted(present & novel_ids))}")
        (out / f"{subset}.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                        "categories": categories}))
    (out / "tags.csv").write_text("\n".join(tags) + "\n")
    return {"images": out / "images", "train": out / "train.json", "val": out / "val.json", "tags": out / "tags.csv"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="folder dataset with full masks")
    parser.add_argument("--novel", required=True, help="comma-separated novel class names")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    started = time.perf_counter()
    files = convert(args.root, [n.strip() for n in args.novel.split(",")], args.workdir / "data")
    run = args.workdir / "run"
    done = simformer("pipeline", "--workdir", str(run), "--dataset", "coco-json", "--images", str(files["images"]),
                     "--annotations", str(files["train"]), "--val-annotations", str(files["val"]),
                     "--tags", str(files["tags"]), "--iters", str(args.iters), "--batch-size", str(args.batch_size),
                     "--device", args.device, "--json")
    table = json.loads(done.stdout)
    split = json.loads((run / "split.zarr" / "manifest.json").read_text())["manifest"]
    print(f"label coverage: {split['label_coverage']}; category ids: {split['category_ids']}")
    metrics = json.loads((run / "model.pred-val.metrics.zarr" / "manifest.json").read_text())["manifest"]
    print("\n".join(f"eval warning: {w}" for w in metrics["summary"]["warnings"]))
    print(f"eval provenance: {metrics['provenance']['labels']['novel_labels']}, "
          f"{[f['role'] for f in metrics['provenance']['labels']['files']]}")
    for stage in ("one_stage", "retrained"):
        report = table[stage]
        print(f"{stage}: base mIoU {report['base_miou']}, novel mIoU {report['novel_miou']}, mIoU {report['miou']}")
    predictions = run / "model-retrained.pred-val.zarr"
    simformer("export", "--predictions", str(predictions), "--format", "coco", "--out", str(args.workdir / "predicted.json"))
    simformer("export", "--predictions", str(predictions), "--format", "png", "--out", str(args.workdir / "predicted"))
    exported = json.loads((args.workdir / "predicted.json").read_text())
    used = sorted({a["category_id"] for a in exported["annotations"]})
    print(f"exported {len(exported['annotations'])} masks of {len({a['image_id'] for a in exported['annotations']})} "
          f"images (category ids used: {used}) to {args.workdir / 'predicted.json'}, "
          f"{len(list((args.workdir / 'predicted').glob('*.png')))} PNGs to {args.workdir / 'predicted'}")
    print(f"seconds: {time.perf_counter() - started:.0f}")


if __name__ == "__main__":
    main()
