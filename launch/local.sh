#!/usr/bin/env bash
# Runs build/bin/trustep (relative to the repository root) on N ranks under Open MPI's mpirun.
#
#   launch/local.sh -n N [--hostfile FILE] [--print] [--] <trustep arguments>
#
# Examples:
#   launch/local.sh -n 2 bench comm --sizes 4k --iters 1
#   launch/local.sh -n 4 -- bench comm --config configs/tiny.ini
#   launch/local.sh -n 16 --hostfile launch/hostfile.example -- bench comm --config configs/small.ini
#
# Launcher options end at `--` or at the first argument that is not one of them.
# What it adds to mpirun on this machine (no hostfile), with C = nproc and T = max(1, C / N):
#   N >  C: --oversubscribe --bind-to none    (ranks share cores; pinning would stack them)
#   N <= C: --bind-to core --map-by core      (T = 1), or
#           --bind-to core --map-by slot:PE=T (T > 1: each rank owns T cores for its threads)
#   OMP_NUM_THREADS=T                         when unset
# With --hostfile: mapping is left to mpirun (add it with TRUSTEP_MPIRUN_ARGS), plus
#   --bind-to none when no NVIDIA GPU is visible here (CPU ranks run several threads each).
# Always:
#   OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1   when run as root (uid 0)
#   -x NAME   for every set TRUSTEP_*, NCCL_*, OMPI_MCA_*, OMP_NUM_THREADS, CUDA_VISIBLE_DEVICES
# Environment:
#   TRUSTEP_BIN           the program to run (default: <repo>/build/bin/trustep)
#   TRUSTEP_MPIRUN        the mpirun to use (default: mpirun)
#   TRUSTEP_MPIRUN_ARGS   extra mpirun arguments, split on whitespace (e.g. "--map-by ppr:8:node")
# The mpirun command is printed on stderr before it runs; --print only prints it (stdout).
# Relative paths in trustep arguments are resolved from the caller's directory. The exit
# status is mpirun's: 0 ok, 1 failure, 2 usage error, 124 collective watchdog
# (see docs/operations.md).
set -euo pipefail

me="$(basename "${BASH_SOURCE[0]}")"
usage() {
  sed -n '4p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
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
    -*) echo "$me: unknown launcher option '$1' (put trustep options after --)" >&2; usage ;;
    *) break ;;  # the trustep command
  esac
done
[[ "$ranks" =~ ^[1-9][0-9]*$ ]] || { echo "$me: -n needs a positive rank count" >&2; usage; }
[[ $# -gt 0 ]] || { echo "$me: no trustep arguments" >&2; usage; }
if [[ -n "$hostfile" && ! -r "$hostfile" ]]; then
  echo "$me: cannot read hostfile '$hostfile'" >&2
  exit 2
fi

bin="${TRUSTEP_BIN:-$root/build/bin/trustep}"
if [[ ! -x "$bin" ]]; then
  echo "$me: $bin is not built (cmake -S . -B build -G Ninja && ninja -C build)" >&2
  exit 2
fi

cmd=("${TRUSTEP_MPIRUN:-mpirun}" -np "$ranks")
if [[ -n "$hostfile" ]]; then
  cmd+=(--hostfile "$hostfile")
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    cmd+=(--bind-to none)
  fi
else
  cores="$(nproc)"
  threads=$(( cores / ranks > 0 ? cores / ranks : 1 ))
  if (( ranks > cores )); then
    cmd+=(--oversubscribe --bind-to none)
  elif (( threads > 1 )); then
    cmd+=(--bind-to core --map-by "slot:PE=$threads")
  else
    cmd+=(--bind-to core --map-by core)
  fi
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}"
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
{ printf '+ '; printf '%q ' "${cmd[@]}"; printf '\n'; } >&2
exec "${cmd[@]}"
