#!/usr/bin/env bash
# The HAM10000 latent generator, end to end and resumable: every stage is skipped when its output
# exists, and the generator training continues (--resume) where the last sitting stopped.
#   MINUTES=80 bash scripts/ham_generator.sh        # one sitting of generator training
# Stages: split, prepare (64 px), captions, autoencoder (f=4, 4 channels), latent cache, decoder v2,
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
# Decoder v2 (shipped since the fourteenth sitting): the decoder alone fine-tuned in three runs,
# 4,500 steps of 16 in all (~27 min). The encoder and latents stay, so the generator below and the
# latent cache serve it unchanged. Export: lesionflow export --kind other --checkpoint
# runs/ae_dec3/ae.safetensors --out models/lesionflow_ham64_ae.safetensors --dtype fp16
DEC=(--data $CACHE/ham64 --splits $CACHE/ham_splits.csv --decoder-only --batch 16 --gan-start 0 --gan-weight 0.1)
[[ -f runs/ae_dec/ae.safetensors ]] || $LF ae train "${DEC[@]}" --init runs/ae_f4c4/ae.safetensors \
    --steps 1000 --lr 2e-4 --out runs/ae_dec
[[ -f runs/ae_dec2/ae.safetensors ]] || $LF ae train "${DEC[@]}" --init runs/ae_dec/ae.safetensors \
    --steps 1500 --lr 1e-4 --out runs/ae_dec2
[[ -f runs/ae_dec3/ae.safetensors ]] || $LF ae train "${DEC[@]}" --init runs/ae_dec2/ae.safetensors \
    --steps 2000 --lr 1e-4 --out runs/ae_dec3
# Reference feature network for HAM-FD / CAS (shipped as models/ham_ref_cnn64.safetensors).
[[ -f runs/ham_ref/best.safetensors ]] || $LF classify train --data $CACHE/ham64 --splits $CACHE/ham_splits.csv \
    --captions $CACHE/ham_captions.jsonl --arch cnn --classes dx --arm real --epochs 30 --patience 8 --out runs/ham_ref
RESUME=()
[[ -f $RUN/state.bin ]] && RESUME=(--resume)
$LF --precision auto train --data $CACHE/ham64 --splits $CACHE/ham_splits.csv --captions $CACHE/ham_captions.jsonl \
    --ae runs/ae_f4c4/ae.safetensors --preset small --steps $STEPS --batch 32 --lr 3e-4 --out $RUN \
    --ckpt-every 250 --keep-every 1000 --sample-every 500 --val-every 250 --max-minutes $MINUTES "${RESUME[@]}"
