#!/usr/bin/env bash
# Does a LoRA adapter move samples toward its subset? Samples the same prompts and seeds with the
# base and with base + adapter, and measures, against held-out real images of the subset (e.g.
# dx=mel) and of a control group (e.g. dx=nv):
#   - FD in the penultimate features of a real-only classifier (FEAT),
#   - the per-channel pixel-statistics distance (model-free),
#   - the mean P(malignant) that classifier gives the generated images.
# Three prompt conditions: the subset's own captions, the control group's captions, and the empty
# prompt without guidance (the model's unconditional distribution: what an adapter does to a
# prompt that does not name the subset). Each condition is repeated for every seed in SEEDS, so
# the seed-to-seed spread of FD is visible next to the base-vs-adapter difference.
# Usage: BASE=... ADAPTER=... FEAT=... DATA=... SPLITS=... PROMPTS_SUBSET=... PROMPTS_CONTROL=...
#        [SUBSET=dx=mel CONTROL=dx=nv SEEDS="7 8" N=2 N_UNCOND=200] scripts/lora_subset_eval.sh
# MODELS / CONDITIONS / SEEDS pick a part of the grid; rows are appended to OUT/lora_eval.csv.
set -euo pipefail
BIN=${BIN:-build/lesionflow}
: "${BASE:?}" "${ADAPTER:?}" "${FEAT:?}" "${DATA:?}" "${SPLITS:?}" "${PROMPTS_SUBSET:?}" "${PROMPTS_CONTROL:?}"
SUBSET=${SUBSET:-dx=mel}
CONTROL=${CONTROL:-dx=nv}
SPLIT=${SPLIT:-test}
N=${N:-2}
N_UNCOND=${N_UNCOND:-200}
SEEDS=${SEEDS:-7 8}
STEPS=${STEPS:-20}
SAMPLER=${SAMPLER:-euler}
CONDITIONS=${CONDITIONS:-subset control uncond}
MODELS=${MODELS:-base lora}
OUT=${OUT:-runs/lora_eval}
mkdir -p "$OUT"
CSV="$OUT/lora_eval.csv"
[ -f "$CSV" ] || echo "model,prompts,seed,images,fd_to_subset,fd_to_control,pixel_stat_to_subset,pixel_stat_to_control,p_malignant_generated,p_malignant_subset_real,p_malignant_control_real" > "$CSV"
fd() {  # images filter -> "fd pixel p_gen p_real"
  "$BIN" --json --quiet fd --features "$FEAT" --data "$DATA" --splits "$SPLITS" --split "$SPLIT" --filter "$2" --images "$1" |
    /usr/bin/python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["fd"], j["pixel_stat_distance"], j["p_malignant_generated"], j["p_malignant_real"])'
}
for seed in $SEEDS; do
  for model in $MODELS; do
    extra=()
    [ "$model" = lora ] && extra=(--lora "$ADAPTER")
    for p in $CONDITIONS; do
      case "$p" in
        subset) prompt=(--prompts-file "$PROMPTS_SUBSET" --n "$N") ;;
        control) prompt=(--prompts-file "$PROMPTS_CONTROL" --n "$N") ;;
        uncond) prompt=(--prompt "" --n "$N_UNCOND" --cfg 1) ;;
        *) echo "unknown condition $p" >&2; exit 2 ;;
      esac
      d="$OUT/${model}_${p}_s${seed}"
      rm -rf "$d"
      "$BIN" --seed "$seed" --quiet sample --checkpoint "$BASE" "${extra[@]}" "${prompt[@]}" \
        --steps "$STEPS" --sampler "$SAMPLER" --out "$d" > /dev/null
      read -r fs ps pg prs <<< "$(fd "$d" "$SUBSET")"
      read -r fc pc _ prc <<< "$(fd "$d" "$CONTROL")"
      n=$(find "$d" -name '*.png' ! -name grid.png | wc -l)
      echo "$model,$p,$seed,$n,$fs,$fc,$ps,$pc,$pg,$prs,$prc" | tee -a "$CSV"
    done
  done
done
