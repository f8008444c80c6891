#!/usr/bin/env bash
# Sets up (scripts/setup.sh), builds, and runs every test: unit tests in one process and the
# MPI suites under mpirun -np 2 and -np 4 (oversubscribed on small machines).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/scripts/setup.sh"
# mpirun refuses root unless told; CI and containers run as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir "${TRUSTEP_BUILD_DIR:-build}" --output-on-failure "$@"
