#!/usr/bin/env bash
# Ablation: x-prediction vs velocity prediction, everything else equal (tiny preset, phantoms at
# 32 px, same steps, seed, data). Scored by FD of 96 samples to the real test split in the
# feature space of a real-only classifier, per class prompt.
# usage: scripts/ablation_prediction.sh DEMO_OUT (a finished scripts/demo.sh output) [STEPS]
set -euo pipefail
D=${1:?demo output directory}
STEPS=${2:-400}
LF=${LF:-./build/lesionflow}
OUT=${OUT:-$D/ablation}
FEAT=$D/experiment/classifiers/cnn_real_n300_s0/best.safetensors
mkdir -p "$OUT"
for pred in x velocity; do
  $LF train --data "$D/cache32" --captions "$D/captions.jsonl" --splits "$D/splits.csv" --preset tiny \
      --prediction $pred --steps "$STEPS" --batch 32 --lr 1e-3 --sample-every 0 --val-every 100 \
      --ckpt-every 1000 --out "$OUT/$pred" --quiet
  for cls in mel nv; do
    if [ $cls = mel ]; then P="dermoscopic image of a malignant melanoma on the back of a 60-year-old man"; else
      P="dermoscopic image of a benign melanocytic nevus on the back of a 40-year-old woman"; fi
    $LF sample --checkpoint "$OUT/$pred/ema.safetensors" --prompt "$P" --n 48 --steps 20 --cfg 3 --seed 3 \
        --out "$OUT/$pred/samples_$cls" --quiet
    echo "$pred $cls $($LF fd --features "$FEAT" --data "$D/cache32" --splits "$D/splits.csv" --split test \
        --filter dx=$cls --images "$OUT/$pred/samples_$cls" --json | tr -d '\n ')"
  done
done | tee "$OUT/ablation.txt"
