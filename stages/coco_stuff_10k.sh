#!/usr/bin/env bash
# The paper's protocol on COCO-Stuff-10K for one official split (1-9), stage by stage.
# Usage: SIMFORMER_DATASETS=/data bash stages/coco_stuff_10k.sh SPLIT [WORKDIR]
# Needs coco/coco_stuff_10k (converted) or the v1.1 release under $SIMFORMER_DATASETS and ImageNet
# ResNet-50 weights in torchvision layout at $R50_WEIGHTS. Pseudo-labelling is single-scale, as in the paper.
set -euo pipefail
SPLIT=${1:?usage: stages/coco_stuff_10k.sh SPLIT [WORKDIR]}
W=${2:-runs/coco-stuff-10k-s$SPLIT}
: "${SIMFORMER_DATASETS:?set SIMFORMER_DATASETS to the folder holding coco/coco_stuff_10k}"
R50_WEIGHTS=${R50_WEIGHTS:-$SIMFORMER_DATASETS/R-50.pth}
LAUNCH=${LAUNCH:-simformer}
resume_flag() { [ -d "$(dirname "$1")/.$(basename "$1").partial/checkpoints" ] && echo --resume || true; }

simformer split --dataset coco-stuff-10k --official-split "$SPLIT" --out "$W/split.zarr"
$LAUNCH train --split "$W/split.zarr" --out "$W/model.zarr" --preset paper \
  --backbone-weights "$R50_WEIGHTS" --checkpoint-every 5000 $(resume_flag "$W/model.zarr")
$LAUNCH infer --model "$W/model.zarr" --split "$W/split.zarr" --out "$W/pred.zarr"
simformer eval --predictions "$W/pred.zarr" --split "$W/split.zarr" --out "$W/metrics.zarr"
$LAUNCH pseudolabel --model "$W/model.zarr" --split "$W/split.zarr" --out "$W/pseudo.zarr"
$LAUNCH retrain --split "$W/split.zarr" --pseudolabels "$W/pseudo.zarr" --out "$W/model-rt.zarr" --preset paper \
  --backbone-weights "$R50_WEIGHTS" --checkpoint-every 5000 $(resume_flag "$W/model-rt.zarr")
$LAUNCH infer --model "$W/model-rt.zarr" --split "$W/split.zarr" --out "$W/pred-rt.zarr"
simformer eval --predictions "$W/pred-rt.zarr" --split "$W/split.zarr" --out "$W/metrics-rt.zarr"
