#!/usr/bin/env bash
# Builds and runs the libFuzzer targets (docs/fuzzing.md): the config parser, the checkpoint
# manifest and loader, the safetensors reader. Needs scripts/setup.sh first (Debian packages, .venv).
#   1. installs clang-14 and libclang-rt-14-dev (libFuzzer, sanitizer runtimes) if missing
#   2. configures build-fuzz/ (-DTRUSTEP_FUZZ=ON: clang, ASan+UBSan, only the fuzzed modules) and builds it
#   3. checks the committed seeds: tests/fuzz/make_corpus.py writes them, valid-* are accepted, bad-* refused
#   4. runs every target for TRUSTEP_FUZZ_SECONDS (default 40) from a copy of its seed corpus, all at once
# Exit status 1 on any finding (crash, sanitizer report, leak, timeout, out-of-memory, exception other
# than trustep::Error, broken property); the input is left in build-fuzz/findings/<target>/ and the
# command to reproduce it is printed.
#   TRUSTEP_FUZZ_SECONDS=40  TRUSTEP_FUZZ_TARGETS="config checkpoint safetensors"  TRUSTEP_JOBS=2
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

seconds="${TRUSTEP_FUZZ_SECONDS:-40}"
read -r -a targets <<<"${TRUSTEP_FUZZ_TARGETS:-config checkpoint safetensors}"
build="build-fuzz"
log() { printf '[fuzz] %s\n' "$*"; }
start=$SECONDS

scripts/debian_packages.sh clang-14 libclang-rt-14-dev
if ! ls .venv/lib/python3*/site-packages/torch/lib/libtorch.so >/dev/null 2>&1; then
  echo "[fuzz] error: no LibTorch in .venv: run scripts/setup.sh first" >&2
  exit 2
fi

# -O1 and assertions on (no NDEBUG): nlohmann's and libstdc++'s checks are findings too.
if [ ! -f "$build/build.ninja" ]; then
  cmake -S . -B "$build" -G Ninja -DTRUSTEP_FUZZ=ON -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
    -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-g -O1" >/dev/null
fi
ninja -C "$build" -j"${TRUSTEP_JOBS:-2}" "${targets[@]/#/fuzz_}"
log "built in $((SECONDS - start)) s"

python3 tests/fuzz/make_corpus.py --check

export ASAN_OPTIONS="detect_leaks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# Every input becomes files (and the round trips fsync): on tmpfs when there is one, 10x faster.
tmp_base="${TMPDIR:-/tmp}"; [ -d /dev/shm ] && [ -w /dev/shm ] && tmp_base=/dev/shm
scratch="$(mktemp -d "$tmp_base/trustep-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
export TRUSTEP_FUZZ_TMP="$scratch"
declare -A max_len=([config]=4096 [checkpoint]=16384 [safetensors]=8192)

# Seeds: each valid-* input must be accepted and each bad-* refused, or the corpus no longer
# reaches what it was written for.
bad_seeds=0
for t in "${targets[@]}"; do
  verdicts="$scratch/$t.verdicts"
  TRUSTEP_FUZZ_VERDICT=1 "$build/bin/fuzz_$t" tests/fuzz/corpus/"$t"/* >"$verdicts" 2>&1 || {
    cat "$verdicts"; echo "[fuzz] error: fuzz_$t failed on its own seeds (above)" >&2; exit 1; }
  while IFS=$'\t' read -r seed verdict; do
    case "$(basename "$seed"):$verdict" in
      valid-*:accepted | bad-*:rejected* | preset-*:accepted) ;;
      *) echo "[fuzz] error: seed $seed: $verdict" >&2; bad_seeds=1 ;;
    esac
  done < <(awk '/^Running: /{seed=$2} /^trustep-fuzz verdict: /{sub(/^trustep-fuzz verdict: /,""); print seed "\t" $0}' "$verdicts")
done
((bad_seeds == 0)) || exit 1
log "seeds: valid-* accepted, bad-* refused"

rm -rf "$build/findings"
declare -A pids
for t in "${targets[@]}"; do
  mkdir -p "$build/findings/$t" "$scratch/corpus-$t"
  cp tests/fuzz/corpus/"$t"/* "$scratch/corpus-$t/"
  "$build/bin/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len="${max_len[$t]}" \
    -dict=tests/fuzz/"$t".dict -print_final_stats=1 -artifact_prefix="$build/findings/$t/" \
    "$scratch/corpus-$t" >"$build/findings/$t.log" 2>&1 &
  pids[$t]=$!
done

stat_of() { awk -v k="stat::$2:" '$1 == k {print $2}' "$1"; }
failed=0 n_failed=0
printf '[fuzz] %-12s %10s %8s %10s  %s\n' target executions exec/s new-units result
for t in "${targets[@]}"; do
  rc=0; wait "${pids[$t]}" || rc=$?
  logf="$build/findings/$t.log"
  finding=$(find "$build/findings/$t" -type f | head -n 1)
  result=ok
  if ((rc != 0)) || [ -n "$finding" ]; then result="FAILED (exit $rc)"; failed=1; n_failed=$((n_failed + 1)); fi
  printf '[fuzz] %-12s %10s %8s %10s  %s\n' "$t" "$(stat_of "$logf" number_of_executed_units)" \
    "$(stat_of "$logf" average_exec_per_sec)" "$(stat_of "$logf" new_units_added)" "$result"
  if [ "$result" != ok ]; then
    grep -E '^==== trustep fuzz finding|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error|Assertion|SUMMARY' \
      "$logf" | head -n 5 | sed 's/^/[fuzz]     /'
    echo "[fuzz]     log: $root/$logf"
    if [ -n "$finding" ]; then echo "[fuzz]     reproduce: $root/$build/bin/fuzz_$t $root/$finding"; fi
  fi
done
log "total $((SECONDS - start)) s"
echo "fuzz: $((${#targets[@]} - n_failed)) passed, $n_failed failed"
exit "$failed"
