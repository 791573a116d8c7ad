#!/usr/bin/env bash
# The HAM10000 latent generator, end to end and resumable: every stage is skipped when its output
# exists, and the generator training continues (--resume) where the last sitting stopped.
#   MINUTES=80 bash scripts/ham_generator.sh        # one sitting of generator training
# Stages: split, prepare (64 px), captions, autoencoder (f=4, 4 channels), latent cache,
# reference feature network (7-class dx CNN), latent MMDiT (bf16 where the CPU has it).
set -euo pipefail
cd "$(dirname "$0")/.."
LF=${LF:-./build/lesionflow}
HAM=${HAM:-../shared/data/ham10000}
CACHE=${CACHE:-cache}
RUN=${RUN:-runs/ham_latent}
MINUTES=${MINUTES:-80}
STEPS=${STEPS:-20000}
mkdir -p "$CACHE" runs
[[ -f $CACHE/ham_splits.csv ]] || $LF data split --dataset ham10000:$HAM --out $CACHE/ham_splits.csv
[[ -f $CACHE/ham64/images.safetensors ]] || $LF data prepare --dataset ham10000:$HAM --out $CACHE/ham64 --size 64
[[ -f $CACHE/ham_captions.jsonl ]] || $LF caption --dataset ham10000:$HAM --out $CACHE/ham_captions.jsonl --quiet
# Autoencoder: 25 min on 2 cores (3,000 steps of 16), validation PSNR 36.1 dB.
[[ -f runs/ae_f4c4/ae.safetensors ]] || $LF ae train --data $CACHE/ham64 --splits $CACHE/ham_splits.csv \
    --out runs/ae_f4c4 --latent-channels 4 --steps 3000 --batch 16 --lr 4e-4 --gan-start 1200 --gan-weight 0.05
$LF ae encode --ae runs/ae_f4c4/ae.safetensors --data $CACHE/ham64   # cached after the first time (13 min)
# Reference feature network for HAM-FD / CAS (shipped as models/ham_ref_cnn64.safetensors).
[[ -f runs/ham_ref/best.safetensors ]] || $LF classify train --data $CACHE/ham64 --splits $CACHE/ham_splits.csv \
    --captions $CACHE/ham_captions.jsonl --arch cnn --classes dx --arm real --epochs 30 --patience 8 --out runs/ham_ref
RESUME=()
[[ -f $RUN/state.bin ]] && RESUME=(--resume)
$LF --precision auto train --data $CACHE/ham64 --splits $CACHE/ham_splits.csv --captions $CACHE/ham_captions.jsonl \
    --ae runs/ae_f4c4/ae.safetensors --preset small --steps $STEPS --batch 32 --lr 3e-4 --out $RUN \
    --ckpt-every 250 --sample-every 500 --val-every 250 --max-minutes $MINUTES "${RESUME[@]}"
