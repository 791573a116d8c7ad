#!/usr/bin/env bash
# Set up, build and run the demo on the embedded phantom dataset (no files needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
OUT=${OUT:-out/demo}
LF=./build/lesionflow
mkdir -p "$OUT"
$LF doctor
$LF data phantom --n 32 --out "$OUT/phantoms"
$LF data inspect --dataset phantom:2000 --json > "$OUT/summary.json"
$LF data split --dataset phantom:2000 --out "$OUT/splits.csv"
$LF data prepare --dataset phantom:2000 --out "$OUT/cache"
echo "demo summary: $OUT/summary.json (phantom grid: $OUT/phantoms/grid.png)"
