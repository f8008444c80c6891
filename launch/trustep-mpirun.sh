#!/usr/bin/env bash
# Runs build/bin/trustep (relative to the repository root) on N ranks under Open MPI's mpirun.
#
#   launch/trustep-mpirun.sh -n N [--hostfile FILE] [--print] -- <trustep arguments>
#
# Examples:
#   launch/trustep-mpirun.sh -n 2 -- bench comm --config configs/tiny.ini
#   launch/trustep-mpirun.sh -n 16 --hostfile launch/hostfile.example -- bench comm --config configs/small.ini
#
# What it adds to mpirun:
#   --oversubscribe       without a hostfile, when N exceeds this machine's cores (nproc)
#   --bind-to none        when no NVIDIA GPU is visible (CPU ranks: LibTorch's threads are not
#                         pinned to one core each)
#   OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1   when run as root (uid 0)
#   OMP_NUM_THREADS       without a hostfile and when unset: max(1, nproc / N)
#   -x NAME               for every set TRUSTEP_*, NCCL_*, OMPI_MCA_*, OMP_NUM_THREADS,
#                         CUDA_VISIBLE_DEVICES variable, so remote ranks see them too
# Environment:
#   TRUSTEP_BIN           the program to run (default: <repo>/build/bin/trustep)
#   TRUSTEP_MPIRUN        the mpirun to use (default: mpirun)
#   TRUSTEP_MPIRUN_ARGS   extra mpirun arguments, split on whitespace (e.g. "--map-by ppr:8:node")
# Relative paths in trustep arguments are resolved from the caller's directory.
# --print shows the command instead of running it. The exit status is mpirun's: 0 ok,
# 1 failure, 2 usage error, 124 collective watchdog (see docs/operations.md).
set -euo pipefail

usage() {
  sed -n '2,4p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ranks=""
hostfile=""
print_only=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n|-np) [[ $# -ge 2 ]] || usage; ranks="$2"; shift 2 ;;
    --hostfile) [[ $# -ge 2 ]] || usage; hostfile="$2"; shift 2 ;;
    --print) print_only=1; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    *) echo "trustep-mpirun.sh: unknown argument '$1' (trustep arguments go after --)" >&2; usage ;;
  esac
done
[[ "$ranks" =~ ^[1-9][0-9]*$ ]] || { echo "trustep-mpirun.sh: -n needs a positive rank count" >&2; usage; }
[[ $# -gt 0 ]] || { echo "trustep-mpirun.sh: no trustep arguments after --" >&2; usage; }
if [[ -n "$hostfile" && ! -r "$hostfile" ]]; then
  echo "trustep-mpirun.sh: cannot read hostfile '$hostfile'" >&2
  exit 2
fi

bin="${TRUSTEP_BIN:-$root/build/bin/trustep}"
if [[ ! -x "$bin" ]]; then
  echo "trustep-mpirun.sh: $bin is not built (cmake -S . -B build -G Ninja && ninja -C build)" >&2
  exit 2
fi

cmd=("${TRUSTEP_MPIRUN:-mpirun}" -np "$ranks")
if [[ -n "$hostfile" ]]; then
  cmd+=(--hostfile "$hostfile")
else
  cores="$(nproc)"
  if (( ranks > cores )); then
    cmd+=(--oversubscribe)
  fi
  if [[ -z "${OMP_NUM_THREADS:-}" ]]; then
    threads=$(( cores / ranks ))
    export OMP_NUM_THREADS=$(( threads > 0 ? threads : 1 ))
  fi
fi

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  cmd+=(--bind-to none)
fi

if [[ "$(id -u)" == 0 ]]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

while IFS= read -r name; do
  case "$name" in
    TRUSTEP_BIN|TRUSTEP_MPIRUN|TRUSTEP_MPIRUN_ARGS) ;;
    TRUSTEP_*|NCCL_*|OMPI_MCA_*|OMP_NUM_THREADS|CUDA_VISIBLE_DEVICES) cmd+=(-x "$name") ;;
  esac
done < <(compgen -e)

if [[ -n "${TRUSTEP_MPIRUN_ARGS:-}" ]]; then
  read -r -a extra <<< "$TRUSTEP_MPIRUN_ARGS"
  cmd+=("${extra[@]}")
fi
cmd+=("$bin" "$@")

if (( print_only )); then
  printf '%q ' "${cmd[@]}"
  printf '\n'
  exit 0
fi
exec "${cmd[@]}"
