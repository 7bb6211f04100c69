#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md in one go (issue 22, item 4), for a machine with a CUDA GPU:
#   bash benchmarks/gpu.sh [BENCHMARKS.md]
# 1. the paper preset's training step: ResNet-50, 512x512 crops, batch 8, bf16 autocast;
# 2. the paper preset's `infer` on 300 synthetic images of 512x512 (single scale, multi-scale + flip);
# 3. the tiny preset's training step on the GPU;
# 4. the whole default pipeline (tiny preset) with --device cuda.
# Each part writes its own section and a failing part does not stop the others; the exit status
# says whether all of them ran.
set -u
out=${1:-BENCHMARKS.md}
python=${PYTHON:-python3}
here=$(dirname "$0")
status=0
run() {
    echo "== $*" >&2
    local began=$SECONDS
    "$@" || { echo "FAILED ($?): $*" >&2; status=1; }
    echo "== $((SECONDS - began)) s" >&2
}
"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.__version__, torch.cuda.get_device_name(0))" || exit 2
run "$python" "$here/train_step.py" --preset paper --device cuda --steps 30 --images 64 --out "$out"
run "$python" "$here/infer_speed.py" --preset paper --device cuda --image-size 512 --out "$out"
run "$python" "$here/train_step.py" --device cuda --steps 100 --images 400 --out "$out"
run "$python" "$here/pipeline.py" --title "synthetic data" --section pipeline_cuda --out "$out" -- --device cuda
exit $status
