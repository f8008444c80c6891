#!/usr/bin/env bash
# kill_rank.sh SIGNAL LIMIT_S MARKER -- COMMAND...
# Runs COMMAND (an mpirun job whose command line contains MARKER, a unique path), waits for its
# first "step" line, sends SIGNAL to the rank-1 process, and passes when the job then ends
# within LIMIT_S seconds, with a non-zero exit and no process of the job left behind.
# SIGKILL is a crashed rank (mpirun ends the job); SIGSTOP a hung one (the watchdog must).
set -u
signal="$1" limit="$2" marker="$3"
shift 3
[ "$1" = "--" ] && shift
out="$(mktemp)"
trap 'rm -f "$out"' EXIT

job_pids() {  # processes whose command line holds the marker, this script (and its subshells) excluded
  local cmd
  for d in /proc/[0-9]*; do
    cmd="$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null)"
    case "$cmd" in *kill_rank.sh*) continue ;; *"$marker"*) echo "${d#/proc/}" ;; esac
  done
}
rank_pid() {  # the job's process with OMPI_COMM_WORLD_RANK=$1
  for p in $(job_pids); do
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1" && { echo "$p"; return; }
  done
}
fail() {
  echo "kill_rank.sh: FAIL: $*" >&2
  cat "$out"
  for p in $(job_pids); do kill -9 "$p" 2>/dev/null; done
  exit 1
}

"$@" >"$out" 2>&1 &
job=$!
for _ in $(seq 600); do  # up to 60 s for start-up and the first step
  grep -q "^step " "$out" && break
  kill -0 "$job" 2>/dev/null || fail "the job ended before its first step"
  sleep 0.1
done
grep -q "^step " "$out" || fail "no step line within 60 s"
victim="$(rank_pid 1)"
[ -n "$victim" ] || fail "no process with OMPI_COMM_WORLD_RANK=1 and '$marker' on its command line"
now_ms() { echo $(($(date +%s%N) / 1000000)); }
t0=$(now_ms)
kill "-$signal" "$victim"
echo "kill_rank.sh: sent SIG$signal to rank 1 (pid $victim)"

while kill -0 "$job" 2>/dev/null; do
  [ $(($(now_ms) - t0)) -gt $((limit * 1000)) ] && fail "the job still runs ${limit} s after SIG$signal"
  sleep 0.1
done
wait "$job"
code=$?
elapsed_ms=$(($(now_ms) - t0))
cat "$out"
sleep 1  # mpirun may return a moment before its last child is reaped
left="$(job_pids | tr '\n' ' ')"
[ -z "$left" ] || fail "processes left behind: $left"
[ "$code" != 0 ] || fail "the job exited 0"
printf 'kill_rank.sh: job ended %d.%01d s after SIG%s with exit %d; no process left\n' \
  $((elapsed_ms / 1000)) $((elapsed_ms % 1000 / 100)) "$signal" "$code"
