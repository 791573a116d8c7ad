#!/usr/bin/env bash
# Set up, build and run the test suite, two tests at a time (the machines have 2 cores).
# Labels: unit (fast), data (reads ../shared/data), slow (short trainings). Default: all of
# them; pass ctest flags to narrow, e.g. -L unit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
bash scripts/build.sh
cd build
ctest --output-on-failure --timeout 900 -j 2 "$@"
