#!/usr/bin/env bash
# trustep `bench layer` against the PyTorch peer (bench/peers/moe_peer.py) with the same -np and
# shapes, under the same mpirun; prints per T the peer/trustep time ratio (> 1: trustep faster).
#
#   bench/peers/compare_layer.sh [-np N] [--build DIR] [--] [bench layer options...]
#
# Options after the script's own are passed to both sides (tokens, hidden, ffn, experts, top-k,
# dtype, comm-dtype, iters, warmup, backward, seed). Environment: MPIRUN (default mpirun),
# PYTHON (default <repo>/.venv/bin/python), MASTER_PORT (default 29531).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
np=2
build="$here/build"
while [[ $# -gt 0 ]]; do
  case "$1" in
    -np) np="$2"; shift 2 ;;
    --build) build="$2"; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
args=("$@")
# The peer implements router selection in one dtype only: drop what it does not take.
peer_args=()
skip=0
for a in "${args[@]}"; do
  if [[ $skip == 1 ]]; then skip=0; continue; fi
  case "$a" in
    --selector) skip=1 ;;
    --selector=*|--compare-dtypes) ;;
    *) peer_args+=("$a") ;;
  esac
done
mpirun="${MPIRUN:-mpirun}"
python="${PYTHON:-$here/.venv/bin/python}"
trustep="$build/bin/trustep"
[[ -x "$trustep" ]] || { echo "compare_layer.sh: no $trustep (pass --build DIR)" >&2; exit 2; }
[[ -x "$python" ]] || { echo "compare_layer.sh: no Python at $python (set PYTHON)" >&2; exit 2; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$mpirun" -np "$np" --oversubscribe "$trustep" bench layer "${args[@]}" --json "$tmp/trustep.json"
echo
echo "peer: $python bench/peers/moe_peer.py"
MASTER_PORT="${MASTER_PORT:-29531}" "$mpirun" -np "$np" --oversubscribe -x MASTER_PORT="${MASTER_PORT:-29531}" \
  "$python" "$here/bench/peers/moe_peer.py" "${peer_args[@]}" > "$tmp/peer.jsonl"
cat "$tmp/peer.jsonl"
echo
"$python" - "$tmp/trustep.json" "$tmp/peer.jsonl" <<'PY'
import json, sys
ours = json.load(open(sys.argv[1]))["records"]
peer = [json.loads(l) for l in open(sys.argv[2]) if l.startswith("{")]
print(f"{'T':>6} {'dtype':>5} {'world':>5} {'fwd trustep':>12} {'fwd peer':>10} {'peer/trustep':>12}"
      f" {'fwdbwd trustep':>15} {'fwdbwd peer':>12} {'peer/trustep':>12}")
for p in peer:
    o = next((r for r in ours if r["tokens"] == p["tokens"] and r["dtype"] == p["dtype"]), None)
    if o is None:
        continue
    fb = ""
    if p.get("fwd_bwd_us") and o.get("fwd_bwd_us"):
        fb = f" {o['fwd_bwd_us']:>15.1f} {p['fwd_bwd_us']:>12.1f} {p['fwd_bwd_us'] / o['fwd_bwd_us']:>12.2f}"
    print(f"{p['tokens']:>6} {p['dtype']:>5} {p['world']:>5} {o['fwd_us']:>12.1f} {p['fwd_us']:>10.1f}"
          f" {p['fwd_us'] / o['fwd_us']:>12.2f}{fb}")
PY
