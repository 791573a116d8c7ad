#!/usr/bin/env bash
# Does a LoRA adapter move samples toward its subset? Samples the same prompts and seeds with the
# base and with base + adapter, and measures FD (penultimate features of a real-only classifier)
# to real images of the subset (e.g. dx=mel) and of a control group (e.g. dx=nv), held-out split.
# Usage: BASE=... ADAPTER=... FEAT=... DATA=... SPLITS=... PROMPTS_SUBSET=... PROMPTS_CONTROL=...
#        SUBSET=dx=mel CONTROL=dx=nv scripts/lora_subset_eval.sh
set -euo pipefail
BIN=${BIN:-build/lesionflow}
: "${BASE:?}" "${ADAPTER:?}" "${FEAT:?}" "${DATA:?}" "${SPLITS:?}" "${PROMPTS_SUBSET:?}" "${PROMPTS_CONTROL:?}"
SUBSET=${SUBSET:-dx=mel}
CONTROL=${CONTROL:-dx=nv}
SPLIT=${SPLIT:-test}
N=${N:-2}
STEPS=${STEPS:-20}
SAMPLER=${SAMPLER:-euler}
OUT=${OUT:-runs/lora_eval}
mkdir -p "$OUT"
echo "model,prompts,fd_to_subset,fd_to_control,pixel_stat_to_subset,pixel_stat_to_control" > "$OUT/lora_eval.csv"
fd() {  # images filter -> "fd pixel"
  "$BIN" --json --quiet fd --features "$FEAT" --data "$DATA" --splits "$SPLITS" --split "$SPLIT" --filter "$2" --images "$1" |
    /usr/bin/python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["fd"], j["pixel_stat_distance"])'
}
for model in base lora; do
  extra=()
  [ "$model" = lora ] && extra=(--lora "$ADAPTER")
  for p in subset control; do
    pf=$([ "$p" = subset ] && echo "$PROMPTS_SUBSET" || echo "$PROMPTS_CONTROL")
    d="$OUT/${model}_${p}_prompts"
    "$BIN" --seed 7 --quiet sample --checkpoint "$BASE" "${extra[@]}" --prompts-file "$pf" --n "$N" \
      --steps "$STEPS" --sampler "$SAMPLER" --out "$d" > /dev/null
    read -r fs ps <<< "$(fd "$d" "$SUBSET")"
    read -r fc pc <<< "$(fd "$d" "$CONTROL")"
    echo "$model,$p,$fs,$fc,$ps,$pc" | tee -a "$OUT/lora_eval.csv"
  done
done
