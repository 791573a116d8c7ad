#!/usr/bin/env bash
# Sampler quality vs cost on a trained generator: for each sampler:steps:seed, sample the same
# prompts, time it, and measure FD (penultimate features of a real-only classifier) to the real
# images of a split. Two Euler-20 runs with different seeds give the FD noise floor.
# Usage: scripts/sampler_sweep.sh  (variables below can be overridden from the environment)
set -euo pipefail
BIN=${BIN:-build/lesionflow}
CKPT=${CKPT:?generator checkpoint (ema.safetensors)}
FEAT=${FEAT:?classifier checkpoint giving the features (best.safetensors)}
DATA=${DATA:?prepared cache of the real images}
SPLITS=${SPLITS:?splits CSV}
SPLIT=${SPLIT:-val}
PROMPTS=${PROMPTS:?prompts file, one per line}
N=${N:-2}
CFG=${CFG:-4}
OUT=${OUT:-runs/sampler_sweep}
CONFIGS=${CONFIGS:-"euler:20:1 euler:20:2 euler:10:1 ab2:10:1 dpm2m:10:1 euler:6:1 ab2:6:1 dpm2m:6:1"}
mkdir -p "$OUT"
echo "sampler,steps,seed,cfg,images,seconds,images_per_second,fd,pixel_stat_distance" > "$OUT/sweep.csv"
for c in $CONFIGS; do
  IFS=: read -r s n seed <<< "$c"
  d="$OUT/${s}_${n}_s${seed}"
  t0=$(date +%s.%N)
  "$BIN" --seed "$seed" --quiet sample --checkpoint "$CKPT" --prompts-file "$PROMPTS" --n "$N" --steps "$n" \
    --sampler "$s" --cfg "$CFG" --out "$d" > /dev/null
  t1=$(date +%s.%N)
  imgs=$(ls "$d"/p*.png | wc -l)
  fdj=$("$BIN" --json --quiet fd --features "$FEAT" --data "$DATA" --splits "$SPLITS" --split "$SPLIT" --images "$d")
  fd=$(echo "$fdj" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["fd"])')
  px=$(echo "$fdj" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["pixel_stat_distance"])')
  secs=$(echo "$t1 - $t0" | bc -l)
  echo "$s,$n,$seed,$CFG,$imgs,$secs,$(echo "$imgs / $secs" | bc -l),$fd,$px" | tee -a "$OUT/sweep.csv"
done
