#!/usr/bin/env bash
# Fails (exit 1) when a C++ file of the tree differs from clang-format's output (.clang-format);
# lists the files. `--fix` formats them in place.
set -euo pipefail
cd "$(dirname "$0")/.."
CF=${CLANG_FORMAT:-$(command -v clang-format || command -v clang-format-14 || true)}
if [[ -z $CF ]]; then
  echo "check_format: clang-format not found (scripts/setup.sh --test installs it)" >&2
  exit 1
fi
mapfile -t files < <(git ls-files -co --exclude-standard -- 'src/*.h' 'src/*.cpp' 'src/*.cc' 'include/*.h' \
                      'tools/*.h' 'tools/*.cpp' 'tests/*.h' 'tests/*.cpp' 'bench/*.cpp')
if [[ ${1:-} == --fix ]]; then
  "$CF" -i "${files[@]}"
  echo "check_format: formatted ${#files[@]} files"
  exit 0
fi
bad=()
for f in "${files[@]}"; do
  [[ -f $f ]] || continue
  if ! "$CF" --dry-run --Werror "$f" >/dev/null 2>&1; then bad+=("$f"); fi
done
if (( ${#bad[@]} )); then
  printf 'not clang-formatted: %s\n' "${bad[@]}"
  echo "check_format: ${#bad[@]} of ${#files[@]} files differ; run scripts/check_format.sh --fix"
  exit 1
fi
echo "check_format: ${#files[@]} files formatted"
