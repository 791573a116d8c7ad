#!/usr/bin/env bash
# Evaluate the shipped generator: per-dx sample grid next to real test images, a label-balanced
# synthetic set with provenance, and its audit in the reference feature space (HAM-FD).
#   bash scripts/ship_eval.sh            (needs cache/ from scripts/ham_generator.sh)
#   GEN=cand/lesionflow_ham64.safetensors OUT=runs/ship_eval_cand bash scripts/ship_eval.sh   (a candidate)
set -euo pipefail
cd "$(dirname "$0")/.."
LF=${LF:-./build/lesionflow}
OUT=${OUT:-runs/ship_eval}
N=${N:-400}
GEN=${GEN:-models/lesionflow_ham64.safetensors}
# The synthetic set follows the training split's mix of dx x subgroup cells (--balance real,
# comparable with the real floor) at the default sampler. Before the twelfth sitting this was
# --balance none, whose cells are flattened (share ~ count^0.5: 41% nevi against 67% in the real
# splits), and the audits before the sixth sitting used BALANCE=label CFG=4.
BALANCE=${BALANCE:-real}
CFG=${CFG:-}
mkdir -p $OUT
OUT=$OUT /usr/bin/python3 - <<'PY'
import csv, json
split = {r["id"]: r["split"] for r in csv.DictReader(open("cache/ham_splits.csv"))}
by = {}
for l in open("cache/ham_captions.jsonl"):
    j = json.loads(l)
    if split.get(j["id"]) == "test" and j["dx"] not in by:
        by[j["dx"]] = j["caption_canonical"]
import os
with open(os.environ.get("OUT", "runs/ship_eval") + "/dx_prompts.txt", "w") as f:
    for d in ["mel", "nv", "bkl", "bcc", "akiec", "vasc", "df"]:
        f.write(by[d] + "\n")
PY
/usr/bin/python3 scripts/real_grid.py cache/ham64 cache/ham_splits.csv test mel,nv,bkl,bcc,akiec,vasc,df 8 $OUT/real_test_by_dx.png
$LF --precision auto sample --checkpoint $GEN --prompts-file $OUT/dx_prompts.txt --n 8 ${CFG:+--cfg $CFG} --out $OUT/samples_by_dx
# Diversity within a prompt (mean MS-SSIM of the 8 seeds of each dx prompt) next to random real pairs.
$LF --json fd --data cache/ham64 --splits cache/ham_splits.csv --split test --images $OUT/samples_by_dx \
    > $OUT/fd_samples_by_dx.json
$LF --precision auto synth --generator $GEN --data cache/ham64 --splits cache/ham_splits.csv \
    --captions cache/ham_captions.jsonl --total $N --balance $BALANCE ${CFG:+--cfg $CFG} --out $OUT/synth
$LF audit --synthetic $OUT/synth --data cache/ham64 --splits cache/ham_splits.csv --captions cache/ham_captions.jsonl \
    --out $OUT/audit.json
