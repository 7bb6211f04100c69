#!/usr/bin/env bash
# The paper's protocol on ADE20K for one official split (1-4), stage by stage.
# Usage: SIMFORMER_DATASETS=/data bash stages/ade20k.sh SPLIT [WORKDIR]
# Needs ADEChallengeData2016 under $SIMFORMER_DATASETS and ImageNet ResNet-50 weights in torchvision
# layout at $R50_WEIGHTS (default $SIMFORMER_DATASETS/R-50.pth). Rerun the same command to resume.
# Multi-GPU: LAUNCH="torchrun --nproc_per_node 4 -m simformer_cli" bash stages/ade20k.sh 1
set -euo pipefail
SPLIT=${1:?usage: stages/ade20k.sh SPLIT [WORKDIR]}
W=${2:-runs/ade20k-s$SPLIT}
: "${SIMFORMER_DATASETS:?set SIMFORMER_DATASETS to the folder holding ADEChallengeData2016}"
R50_WEIGHTS=${R50_WEIGHTS:-$SIMFORMER_DATASETS/R-50.pth}
LAUNCH=${LAUNCH:-simformer}
resume_flag() { [ -d "$(dirname "$1")/.$(basename "$1").partial/checkpoints" ] && echo --resume || true; }

simformer split --dataset ade20k --official-split "$SPLIT" --out "$W/split.zarr"
$LAUNCH train --split "$W/split.zarr" --out "$W/model.zarr" --preset paper \
  --backbone-weights "$R50_WEIGHTS" --checkpoint-every 5000 $(resume_flag "$W/model.zarr")
$LAUNCH infer --model "$W/model.zarr" --split "$W/split.zarr" --out "$W/pred.zarr"
simformer eval --predictions "$W/pred.zarr" --split "$W/split.zarr" --out "$W/metrics.zarr"
# Pseudo labels with multi-scale + flip test-time augmentation (short sides 320-960 around 512), as in the paper.
$LAUNCH pseudolabel --model "$W/model.zarr" --split "$W/split.zarr" --out "$W/pseudo.zarr" \
  --scales 0.625,0.9375,1.25,1.5625,1.875 --flip
$LAUNCH retrain --split "$W/split.zarr" --pseudolabels "$W/pseudo.zarr" --out "$W/model-rt.zarr" --preset paper \
  --backbone-weights "$R50_WEIGHTS" --checkpoint-every 5000 $(resume_flag "$W/model-rt.zarr")
$LAUNCH infer --model "$W/model-rt.zarr" --split "$W/split.zarr" --out "$W/pred-rt.zarr"
simformer eval --predictions "$W/pred-rt.zarr" --split "$W/split.zarr" --out "$W/metrics-rt.zarr"
