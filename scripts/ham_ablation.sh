#!/usr/bin/env bash
# Equal-budget arms of the generator ablation (issue 14): the same data, network size, batch,
# learning-rate schedule (cosine over 20,000 steps, as the shipped run) and number of images
# (STOP steps of 32), resumable. Needs the stages of scripts/ham_generator.sh (cache, autoencoder).
#   ARM=diffusion MINUTES=60 bash scripts/ham_ablation.sh      # DDPM eps-prediction, DDIM sampling
#   ARM=pixel     MINUTES=60 bash scripts/ham_ablation.sh      # the pixel `small` model (patch 8)
#   ARM=medium    STOP=N     bash scripts/ham_ablation.sh      # latent flow, `medium` (1.5x wider)
# The medium arm gets the latent arm's wall clock (80 min idle), not its steps: STOP is the step
# count it reaches in 80 idle minutes (pauses for compiling do not count against it).
# The latent rectified-flow arm is the shipped run itself (runs/ham_latent, v1 = step 3,034).
set -euo pipefail
cd "$(dirname "$0")/.."
LF=${LF:-./build/lesionflow}
CACHE=${CACHE:-cache}
ARM=${ARM:-diffusion}
STOP=${STOP:-3034}
MINUTES=${MINUTES:-60}
RUN=${RUN:-runs/abl_$ARM}
PRESET=small
case $ARM in
  diffusion) SPACE=(--ae runs/ae_f4c4/ae.safetensors --objective diffusion) ;;
  pixel) SPACE=() ;;
  medium) SPACE=(--ae runs/ae_f4c4/ae.safetensors); PRESET=medium ;;
  *) echo "unknown ARM '$ARM' (diffusion | pixel | medium)" >&2; exit 2 ;;
esac
RESUME=()
[[ -f $RUN/state.bin ]] && RESUME=(--resume)
$LF --precision auto train --data $CACHE/ham64 --splits $CACHE/ham_splits.csv --captions $CACHE/ham_captions.jsonl \
    "${SPACE[@]}" --preset $PRESET --steps 20000 --stop-at-step $STOP --batch 32 --lr 3e-4 --out $RUN \
    --ckpt-every 250 --sample-every 500 --val-every 250 --max-minutes $MINUTES "${RESUME[@]}"
