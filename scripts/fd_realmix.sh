#!/usr/bin/env bash
# HAM-FD of 400 synthetic images whose dx x subgroup mix follows the real training split
# (synth --balance real), against the test split. Needs cache/ from scripts/ham_generator.sh.
#   TAG=v3 CFG=1 bash scripts/fd_realmix.sh                      # the shipped model
#   TAG=cand G=runs/x/ema.safetensors CFG=1 bash scripts/fd_realmix.sh
#   SEED=1 SUFFIX=_seed1 ...: another draw of the plan and noise (the FD's own spread)
set -euo pipefail
cd "$(dirname "$0")/.."
LF=./build/lesionflow
G=${G:-models/lesionflow_ham64.safetensors}
TAG=${TAG:-shipped}
SUFFIX=${SUFFIX:-}
d=${OUTROOT:-runs/matched}/${TAG}${SUFFIX}
mkdir -p $d
[[ -f $d/fd.txt ]] && { tail -1 $d/fd.txt; exit 0; }
$LF --seed ${SEED:-0} --precision auto synth --generator $G --data cache/ham64 --splits cache/ham_splits.csv \
    --captions cache/ham_captions.jsonl --total 400 --balance real --sampler ${SAMPLER:-dpm2m} --steps ${STEPS:-20} --cfg ${CFG:-1} ${EXTRA:-} --out $d/synth > $d.log 2>&1
$LF fd --data cache/ham64 --splits cache/ham_splits.csv --split test --images $d/synth/images > $d/fd.txt 2>&1
echo "$TAG$SUFFIX: $(tail -1 $d/fd.txt)"
