#!/usr/bin/env bash
# Installs everything trustep needs on a fresh Debian machine and builds it.
# Idempotent: a second run only checks (seconds) and rebuilds what changed (ninja + ccache).
#   Debian packages: compilers, CMake/Ninja, ccache, OpenMPI, Boost.Program_options, GoogleTest,
#                    spdlog/fmt, nlohmann-json, SQLite, zlib, OpenBLAS
#   .venv/         : the pinned torch wheel from PyPI (LibTorch for C++, found by CMake), numpy, matplotlib
#   build/         : cmake -S . -B build -G Ninja && ninja
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

TORCH_VERSION="2.15.0"   # pinned: bump deliberately, rebuild from scratch
BUILD_DIR="${TRUSTEP_BUILD_DIR:-build}"
packages=(build-essential cmake ninja-build ccache pkg-config
          openmpi-bin libopenmpi-dev libboost-program-options-dev
          libgtest-dev libgmock-dev libspdlog-dev libfmt-dev nlohmann-json3-dev libsqlite3-dev zlib1g-dev
          libopenblas0-pthread python3 python3-venv)

log() { printf '[setup] %s\n' "$*"; }

"$root/scripts/debian_packages.sh" "${packages[@]}"

# Python packages, pinned: torch (LibTorch for C++; ~5 GB with its CUDA runtime wheels),
# numpy (the Python prototype baseline of `bench select`) and matplotlib (scripts/plot_*.py).
PY_PACKAGES=("torch==$TORCH_VERSION" "numpy==2.4.6" "matplotlib==3.11.2")
py="$root/.venv/bin/python"
[ -x "$py" ] || { log "creating .venv"; python3 -m venv "$root/.venv"; }
missing_py=()
for spec in "${PY_PACKAGES[@]}"; do
  ls "$root"/.venv/lib/python3*/site-packages/"${spec%%==*}-${spec##*==}".dist-info >/dev/null 2>&1 || missing_py+=("$spec")
done
if ((${#missing_py[@]})); then
  log "installing into .venv: ${missing_py[*]}"
  "$py" -m pip install -q --disable-pip-version-check "${missing_py[@]}"
fi

if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
ninja -C "$BUILD_DIR" -j"${TRUSTEP_JOBS:-2}"
log "ready: $BUILD_DIR/bin/trustep"
