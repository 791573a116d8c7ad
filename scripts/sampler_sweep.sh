#!/usr/bin/env bash
# Sampler quality vs cost on a trained generator: for each sampler:steps:seed, sample the same
# prompts, time it, and measure FD (penultimate features of a real-only classifier) to the real
# images of a split. Two Euler-20 runs with different seeds give the FD noise floor.
# A config is sampler:steps:seed[:cfg[:model]]; cfg defaults to $CFG and model to CKPT; model TAG
# reads the checkpoint from $CKPT_TAG (e.g. a distilled student: CKPT_student=... and
# "euler:4:1:1:student").
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
[ -f "$OUT/sweep.csv" ] || echo "sampler,steps,seed,cfg,images,seconds,images_per_second,fd,pixel_stat_distance,model,p_malignant_generated,p_malignant_real" > "$OUT/sweep.csv"
for c in $CONFIGS; do
  IFS=: read -r s n seed cfg model <<< "$c"
  cfg=${cfg:-$CFG}
  model=${model:-base}
  ck="$CKPT"
  if [ "$model" != base ]; then v="CKPT_$model"; ck=${!v:?"set CKPT_$model for config $c"}; fi
  d="$OUT/${model}_${s}_${n}_cfg${cfg}_s${seed}"
  t0=$(date +%s.%N)
  "$BIN" --seed "$seed" --quiet sample --checkpoint "$ck" --prompts-file "$PROMPTS" --n "$N" --steps "$n" \
    --sampler "$s" --cfg "$cfg" --out "$d" > /dev/null
  t1=$(date +%s.%N)
  imgs=$(ls "$d"/p*.png | wc -l)
  fdj=$("$BIN" --json --quiet fd --features "$FEAT" --data "$DATA" --splits "$SPLITS" --split "$SPLIT" --images "$d")
  fd=$(echo "$fdj" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["fd"])')
  px=$(echo "$fdj" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["pixel_stat_distance"])')
  pm=$(echo "$fdj" | /usr/bin/python3 -c 'import json,sys; j=json.load(sys.stdin); print(j.get("p_malignant_generated",""), j.get("p_malignant_real",""), sep=",")')
  secs=$(echo "$t1 - $t0" | bc -l)
  echo "$s,$n,$seed,$cfg,$imgs,$secs,$(echo "$imgs / $secs" | bc -l),$fd,$px,$model,$pm" | tee -a "$OUT/sweep.csv"
done
