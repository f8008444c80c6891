#!/usr/bin/env bash
# Builds trustep with AddressSanitizer + UndefinedBehaviorSanitizer (build-sanitize/, CPU only,
# -O0 -g1: the fastest compile; the heavy lifting is in LibTorch, which is not instrumented)
# and runs the unit tests and the MPI suites (mpirun -np 2 and -np 4) under it (docs/sanitizers.md).
# Needs scripts/setup.sh first (Debian packages, .venv). Any sanitizer report fails the test that
# caused it: UBSan does not recover, ASan stops at the first error, LeakSanitizer checks at exit.
#   TRUSTEP_SANITIZE_TESTS='^(unit|mpi)\.'  (ctest -R)   TRUSTEP_JOBS=2
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

# Leaks are checked at exit; the suppressions cover what LibTorch and Open MPI allocate once and
# never free (tests/lsan.supp says which). A report anywhere makes the test fail.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1"
export LSAN_OPTIONS="suppressions=$root/tests/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export GTEST_COLOR=no
tests="${TRUSTEP_SANITIZE_TESTS:-^(unit|mpi)\.}"
t0=$SECONDS
ctest --test-dir "$build" --output-on-failure -R "$tests" "$@"
log "tests ($tests) clean under ASan + UBSan in $((SECONDS - t0)) s; total $((SECONDS - start)) s"
