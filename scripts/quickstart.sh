#!/usr/bin/env bash
# Sets up, builds and runs the main job: a 2-rank all-to-all-v benchmark against raw MPI.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/scripts/setup.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun -np 2 --oversubscribe build/bin/trustep bench comm --json bench-comm.json "$@"
