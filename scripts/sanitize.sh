#!/usr/bin/env bash
# Builds trustep with AddressSanitizer + UndefinedBehaviorSanitizer (build-sanitize/, CPU only,
# -O0 -g1: the fastest compile; the heavy lifting is in LibTorch, which is not instrumented)
# and runs under it the unit tests, the MPI suites (mpirun -np 2 and -np 4) and the program end to
# end (train on 2 ranks with checkpoints, resume, infer, inspect, a failed resume) (docs/sanitizers.md).
# Needs scripts/setup.sh first (Debian packages, .venv). Any sanitizer report fails the test that
# caused it: UBSan does not recover, ASan stops at the first error, LeakSanitizer checks at exit.
#   TRUSTEP_JOBS=2
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
build="build-sanitize"
log() { printf '[sanitize] %s\n' "$*"; }
start=$SECONDS

if ! ls .venv/lib/python3*/site-packages/torch/lib/libtorch.so >/dev/null 2>&1; then
  echo "[sanitize] error: no LibTorch in .venv: run scripts/setup.sh first" >&2
  exit 2
fi
if [ ! -f "$build/build.ninja" ]; then
  cmake -S . -B "$build" -G Ninja -DTRUSTEP_SANITIZE=ON -DTRUSTEP_WITH_CUDA=OFF -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_CXX_FLAGS_DEBUG="-O0 -g1" -DCMAKE_C_FLAGS_DEBUG="-O0 -g1" >/dev/null
fi
ninja -C "$build" -j"${TRUSTEP_JOBS:-2}" trustep_unit_tests trustep_mpi_tests trustep_cli
log "built in $((SECONDS - start)) s"

# Any report makes the process fail. Leaks: the unit tests are checked at exit, the MPI suites
# just before MPI_Finalize (tests/mpi/main.cpp), with Open MPI's components kept loaded (else
# their allocations are "leaks" from unknown modules) and stacks unwound fully, so that
# tests/lsan.supp can match, by library, what Open MPI, PMIx and hwloc keep for the process.
asan="detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1"
export LSAN_OPTIONS="suppressions=$root/tests/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mca_base_component_disable_dlclose=1
export GTEST_COLOR=no

# The unit tests in one process (ctest would start one per test: 190 LibTorch start-ups).
t0=$SECONDS
ASAN_OPTIONS="$asan" TRUSTEP_TEST_DATA="$root/tests/data" "$build/bin/trustep_unit_tests" --gtest_brief=1
log "unit tests clean under ASan + UBSan in $((SECONDS - t0)) s"
t0=$SECONDS
ASAN_OPTIONS="$asan:fast_unwind_on_malloc=0" ctest --test-dir "$build" --output-on-failure -R '^mpi\.' "$@"
log "MPI suites (2 and 4 ranks, watchdog) clean under ASan + UBSan in $((SECONDS - t0)) s"

# The program end to end, leaks checked at exit (after MPI_Finalize).
t0=$SECONDS
run="$build/e2e"
rm -rf "$run"
small=(--ffn 64 --layers 2 --heads 2 --kv-heads 1 --experts 4 --seq-len 24 --batch 4 --warmup 2
       --steps 6 --checkpoint-every 3 --no-plots --mode trust-first --epsilon 0.2 --out "$run")
mpirun=(mpirun --oversubscribe --bind-to none -np 2)
export ASAN_OPTIONS="$asan:fast_unwind_on_malloc=0"
"${mpirun[@]}" "$build/bin/trustep" train "${small[@]}" --hidden 32 --stop-after 3
"${mpirun[@]}" "$build/bin/trustep" train "${small[@]}" --hidden 32 --resume auto
"${mpirun[@]}" "$build/bin/trustep" infer --checkpoint "$run/checkpoints" --prompt "srt:dcab=" --max-new-tokens 8
"$build/bin/trustep" inspect --backend self --checkpoint "$run/checkpoints" >/dev/null
# An error path: a checkpoint of another shape fails every rank together (exit 1), cleanly.
code=0
"${mpirun[@]}" "$build/bin/trustep" train "${small[@]}" --hidden 48 --resume auto 2>"$run/err.txt" || code=$?
if [ "$code" != 1 ] || ! grep -q "holds a different model" "$run/err.txt"; then
  cat "$run/err.txt"
  echo "[sanitize] error: the failed resume exited $code, expected 1 with 'holds a different model'" >&2
  exit 1
fi
log "train, resume, infer, inspect and a failed resume clean under ASan + UBSan in $((SECONDS - t0)) s"
log "total $((SECONDS - start)) s"
