#!/usr/bin/env bash
# Evaluation of the equal-budget generator arms (issue 14), all with the same binary and settings:
# 400 images on the training split's caption mix (synth --balance none), 20 steps (Euler; on a
# diffusion network that is DDIM on DDPM's grid), CFG 2, then `audit` (HAM-FD, precision/recall,
# CAS, concept adherence). Resumable: finished arms are skipped.
#   bash scripts/ham_ablation_eval.sh flow=runs/abl_eval/v1_flow_3034.safetensors diffusion=runs/abl_diffusion/ema.safetensors
set -euo pipefail
cd "$(dirname "$0")/.."
LF=${LF:-./build/lesionflow}
CACHE=${CACHE:-cache}
OUT=${OUT:-runs/abl_eval}
for arm in "$@"; do
  name=${arm%%=*}
  ckpt=${arm#*=}
  O=$OUT/$name
  [[ -f $O/audit.json ]] && continue
  $LF --precision auto synth --generator "$ckpt" --data $CACHE/ham64 --splits $CACHE/ham_splits.csv \
    --captions $CACHE/ham_captions.jsonl --total 400 --balance none --steps 20 --cfg 2 --out $O/synth
  $LF audit --synthetic $O/synth --data $CACHE/ham64 --splits $CACHE/ham_splits.csv \
    --captions $CACHE/ham_captions.jsonl --out $O/audit.json
done
echo "ablation evaluation done: $OUT/*/audit.json"
