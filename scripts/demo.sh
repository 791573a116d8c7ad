#!/usr/bin/env bash
# Set up, build and run the whole pipeline on the embedded phantom lesions (no files needed),
# ending with a self-contained HTML report. Pipeline time after the build: about 8-9 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
OUT=${OUT:-out/demo}
LF=./build/lesionflow
N=${N:-2000}
TRAIN_MINUTES=${TRAIN_MINUTES:-3.5}
mkdir -p "$OUT"
$LF doctor
$LF data phantom --n 32 --size 64 --out "$OUT/phantoms"
$LF data inspect --dataset phantom:$N --json > "$OUT/summary.json"
$LF data split --dataset phantom:$N --out "$OUT/splits.csv"
$LF caption --dataset phantom:$N --out "$OUT/captions.jsonl" --quiet
$LF data prepare --dataset phantom:$N --out "$OUT/cache32" --size 32 --quiet
# One command from here: train the generator (tiny, time-boxed), plan + generate a balanced
# synthetic set, train CNN classifiers on real / real+synthetic / synthetic-only (2 seeds),
# audit the synthetic images. Every stage is cached: a rerun skips finished work.
cat > "$OUT/experiment.json" <<EOF
{"data": "$OUT/cache32", "splits": "$OUT/splits.csv", "captions": "$OUT/captions.jsonl",
 "generator": {"train_args": ["--preset", "tiny", "--steps", "3000", "--batch", "32", "--lr", "1e-3",
               "--max-minutes", "$TRAIN_MINUTES", "--sample-every", "100", "--val-every", "50", "--ckpt-every", "250"]},
 "synth": {"total": 300, "steps": 12, "cfg": 3},
 "real_sizes": [300], "seeds": [0, 1], "arms": ["real", "real+synthetic", "synthetic"],
 "classifier": {"archs": ["cnn"], "epochs": 6, "patience": 3, "width": 32},
 "out": "$OUT/experiment"}
EOF
$LF experiment --config "$OUT/experiment.json"
cat > "$OUT/prompts.txt" <<'P'
dermoscopic image of a malignant melanoma on the back of a 65-year-old man; asymmetric in two axes, irregular border, four colours: white, dark brown, blue-gray and black
dermoscopic image of a benign melanocytic nevus on the trunk of a 40-year-old woman; symmetric, regular border, one colour: light brown
dermoscopic image of a benign melanocytic nevus on the back of a 30-year-old woman; symmetric, regular border, two colours: light brown and dark brown
dermoscopic image of a malignant melanoma on the face of a 70-year-old woman; asymmetric in one axis, irregular border, three colours: red, dark brown and black
P
$LF sample --checkpoint "$OUT/experiment/generator/ema.safetensors" --prompts-file "$OUT/prompts.txt" \
    --n 8 --steps 20 --cfg 3 --out "$OUT/samples"
$LF report --title "lesionflow demo (phantom lesions)" --data-summary "$OUT/summary.json" \
    --captions "$OUT/captions.jsonl" --train-run "$OUT/experiment/generator" --samples "$OUT/samples" \
    --experiment "$OUT/experiment" \
    --real "$OUT/cache32" --out "$OUT/report.html"
echo "demo report: $(realpath "$OUT/report.html")"
