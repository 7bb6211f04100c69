"""Fingerprints of what the code produces, to show that a change of structure changed no result.

Makes two synthetic splits (a small 40-image one, and the default pipeline's: ``--ratio 3:1
--seed 0``), trains 8 steps on the small one, and prints the split manifests' digests, a hash of
each split's stored files and decoded arrays, and the sha256 of the trained weights. Run it before
and after a refactoring: the lines must be identical. Usage::

    OMP_NUM_THREADS=1 python benchmarks/identity_check.py [--workdir DIR]

Every stage runs through the command line (``python -m simformer_cli``), so the script does not
depend on where things live inside the package. One thread: float sums, and so the weights,
depend on how many threads share them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import zarr

REPO = Path(__file__).resolve().parents[1]


def simformer(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "simformer_cli", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stored_files_hash(artifact: Path) -> str:
    """sha256 over every stored file (relative path and bytes), the manifest aside: it records
    when and where the artifact was made."""
    digest = hashlib.sha256()
    for path in sorted(p for p in artifact.rglob("*") if p.is_file() and p.name != "manifest.json"):
        digest.update(path.relative_to(artifact).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def arrays_hash(artifact: Path) -> str:
    """sha256 over every array's name, dtype, shape and decoded values."""
    digest = hashlib.sha256()
    group = zarr.open_group(str(artifact), mode="r")
    paths = sorted(str(p.parent.relative_to(artifact).as_posix()) for p in artifact.rglob("zarr.json")
                   if json.loads(p.read_text())["node_type"] == "array")
    for path in paths:
        values = np.asarray(group[path][...])
        digest.update(f"{path}:{values.dtype}:{values.shape}".encode())
        if values.dtype == object:  # stored files (a split's images): each one's length and bytes
            for item in values:
                digest.update(len(item).to_bytes(8, "little") + item)
        else:
            digest.update(values.tobytes())
    return digest.hexdigest()


def split_lines(name: str, artifact: Path) -> list[str]:
    document = json.loads((artifact / "manifest.json").read_text())
    return [f"{name} split digest: {document['digest']}",
            f"{name} split stored files sha256: {stored_files_hash(artifact)}",
            f"{name} split arrays sha256: {arrays_hash(artifact)}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the artifacts here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        small, default, model = work / "small.zarr", work / "default.zarr", work / "model.zarr"
        simformer("split", "--dataset", "synthetic", "--synthetic-train", "40", "--synthetic-val", "8",
                  "--synthetic-test", "0", "--workers", "1", "--out", str(small), "--force")
        simformer("split", "--dataset", "synthetic", "--ratio", "3:1", "--seed", "0", "--workers", "1",
                  "--out", str(default), "--force")
        simformer("train", "--split", str(small), "--iters", "8", "--device", "cpu", "--workers", "0",
                  "--out", str(model), "--force")
        lines = split_lines("small", small) + split_lines("default", default)
        weights = hashlib.sha256((model / "weights.safetensors").read_bytes()).hexdigest()
        recorded = json.loads((model / "manifest.json").read_text())["manifest"]["weights_sha256"]
        lines.append(f"model (8 steps on the small split) weights sha256: sha256:{weights} (manifest: {recorded})")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
