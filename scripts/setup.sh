#!/usr/bin/env bash
# lesionflow setup: installs every Debian package the project needs and makes
# OpenBLAS (openmp) the active libblas.so.3. Idempotent; run as root or with sudo.
#   scripts/setup.sh            build + runtime packages
#   scripts/setup.sh --test     also the packages tests need (python3-torch for parity,
#                               scikit-learn for metric checks, chromium for the report test)
set -euo pipefail
want_test=0
for a in "$@"; do
  case "$a" in
    --test) want_test=1 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$a'" >&2; exit 2 ;;
  esac
done
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

pkgs=(build-essential cmake ninja-build ccache pkg-config git
      libtorch-dev libgloo-dev libopenblas0-openmp libopenblas-openmp-dev
      libopencv-dev libcli11-dev nlohmann-json3-dev
      libsentencepiece-dev sentencepiece libcpp-httplib-dev
      libgtest-dev libgmock-dev googletest libbenchmark-dev libtcmalloc-minimal4)
if [[ $want_test -eq 1 ]]; then
  pkgs+=(python3 python3-numpy python3-torch python3-sklearn chromium clang-format)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all ${#pkgs[@]} packages present"
fi

# Make OpenBLAS (openmp) the active BLAS/LAPACK; the reference BLAS is ~100x slower.
arch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
blas=/usr/lib/$arch/openblas-openmp/libblas.so.3
lapack=/usr/lib/$arch/openblas-openmp/liblapack.so.3
if [[ -e $blas ]]; then
  $SUDO update-alternatives --set "libblas.so.3-$arch" "$blas" >/dev/null
  [[ -e $lapack ]] && $SUDO update-alternatives --set "liblapack.so.3-$arch" "$lapack" >/dev/null
fi
active=$(readlink -f "/usr/lib/$arch/libblas.so.3")
case "$active" in
  *openblas*) echo "setup: active BLAS: $active" ;;
  *) echo "setup: ERROR: active libblas.so.3 is $active, not OpenBLAS" >&2; exit 1 ;;
esac
