#!/usr/bin/env bash
# expect.sh --exit CODE [--match REGEX] [--lines N] [--file F] -- COMMAND...
# Runs COMMAND and passes when it exits with CODE and at least N lines of its output (or of
# file F, when given) match the extended regex REGEX. Used for behaviour that ends the process:
# exit codes, errors on every rank, watchdog aborts.
set -u
want_exit="" regex="" lines=1 file=""
while [ $# -gt 0 ]; do
  case "$1" in
    --exit) want_exit="$2"; shift 2 ;;
    --match) regex="$2"; shift 2 ;;
    --lines) lines="$2"; shift 2 ;;
    --file) file="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "expect.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$file" ] && rm -f "$file"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
"$@" >"$out" 2>&1
code=$?
cat "$out"
status=0
if [ -n "$want_exit" ] && [ "$code" != "$want_exit" ]; then
  echo "expect.sh: FAIL: exit code $code, expected $want_exit" >&2
  status=1
fi
if [ -n "$regex" ]; then
  src="$out"; [ -n "$file" ] && src="$file"
  n=$(grep -cE -- "$regex" "$src" 2>/dev/null || true)
  if [ "${n:-0}" -lt "$lines" ]; then
    echo "expect.sh: FAIL: ${n:-0} lines of ${src} match '$regex', expected at least $lines" >&2
    status=1
  fi
fi
exit $status
