#!/usr/bin/env bash
# The whole weak-shot chain on the built-in synthetic data, one stage at a time.
# Usage: bash stages/quickstart.sh [WORKDIR]      (rerun to resume; finished stages are skipped)
# Extra options for every training stage can be passed in TRAIN_OPTS, e.g. TRAIN_OPTS="--iters 50".
# Synthetic data settings can be passed in SPLIT_OPTS, e.g. SPLIT_OPTS="--synthetic-train 200".
set -euo pipefail
W=${1:-runs/quickstart}
TRAIN_OPTS=${TRAIN_OPTS:-}
SPLIT_OPTS=${SPLIT_OPTS:-}
DEVICE=${DEVICE:-auto}
RESUME=()
simformer split --dataset synthetic --ratio 3:1 --seed 0 --out "$W/split.zarr" $SPLIT_OPTS
[ -d "$W/.model.zarr.partial/checkpoints" ] && RESUME=(--resume)
simformer train --split "$W/split.zarr" --out "$W/model.zarr" --device "$DEVICE" "${RESUME[@]}" $TRAIN_OPTS
simformer infer --model "$W/model.zarr" --split "$W/split.zarr" --out "$W/pred.zarr" --device "$DEVICE"
simformer eval --predictions "$W/pred.zarr" --split "$W/split.zarr" --out "$W/metrics.zarr"
simformer pseudolabel --model "$W/model.zarr" --split "$W/split.zarr" --out "$W/pseudo.zarr" --device "$DEVICE"
RESUME=()
[ -d "$W/.model-rt.zarr.partial/checkpoints" ] && RESUME=(--resume)
# --init-from: fine-tune the one-stage model (as `simformer pipeline` does); drop it to retrain
# from the preset's initialisation as the paper does.
simformer retrain --split "$W/split.zarr" --pseudolabels "$W/pseudo.zarr" --out "$W/model-rt.zarr" \
  --init-from "$W/model.zarr" --device "$DEVICE" "${RESUME[@]}" $TRAIN_OPTS
simformer infer --model "$W/model-rt.zarr" --split "$W/split.zarr" --out "$W/pred-rt.zarr" --device "$DEVICE"
simformer eval --predictions "$W/pred-rt.zarr" --split "$W/split.zarr" --out "$W/metrics-rt.zarr"
