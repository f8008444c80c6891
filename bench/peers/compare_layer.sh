#!/usr/bin/env bash
# trustep `bench layer` against the PyTorch peer (bench/peers/moe_peer.py), and with --deepspeed
# also against DeepSpeed-MoE (bench/peers/deepspeed_peer.py, installed on demand by
# setup_peers.sh), with the same -np and shapes, under the same mpirun; prints per T each peer's
# time over trustep's (> 1: trustep faster).
#
#   bench/peers/compare_layer.sh [-np N] [--build DIR] [--deepspeed] [--keep DIR] [--] [bench layer options...]
#
# Options after the script's own are passed to every side (tokens, hidden, ffn, experts, top-k,
# dtype, comm-dtype, iters, warmup, backward, seed); DeepSpeed is skipped with --comm-dtype (its
# wire dtype is the hidden dtype). --keep DIR keeps the raw records (trustep.json, peer.jsonl,
# deepspeed.jsonl). Environment: MPIRUN (default mpirun), PYTHON (default
# <repo>/.venv/bin/python), MASTER_PORT (default 29531).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
np=2
build="$here/build"
deepspeed=0
keep=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    -np) np="$2"; shift 2 ;;
    --build) build="$2"; shift 2 ;;
    --deepspeed) deepspeed=1; shift ;;
    --keep) keep="$2"; shift 2 ;;
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
    --comm-dtype|--comm-dtype=*)
      peer_args+=("$a")
      if [[ $deepspeed == 1 ]]; then
        echo "compare_layer.sh: DeepSpeed skipped: its MoE layer has no wire dtype of its own (--comm-dtype)" >&2
        deepspeed=0
      fi ;;
    *) peer_args+=("$a") ;;
  esac
done
mpirun="${MPIRUN:-mpirun}"
python="${PYTHON:-$here/.venv/bin/python}"
trustep="$build/bin/trustep"
[[ -x "$trustep" ]] || { echo "compare_layer.sh: no $trustep (pass --build DIR)" >&2; exit 2; }
[[ -x "$python" ]] || { echo "compare_layer.sh: no Python at $python (set PYTHON)" >&2; exit 2; }

if [[ -n "$keep" ]]; then
  mkdir -p "$keep"; tmp="$keep"
else
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
fi
[[ $deepspeed == 1 ]] && PYTHON="$python" "$here/bench/peers/setup_peers.sh"
"$mpirun" -np "$np" --oversubscribe "$trustep" bench layer "${args[@]}" --json "$tmp/trustep.json"
echo
echo "peer: $python bench/peers/moe_peer.py"
MASTER_PORT="${MASTER_PORT:-29531}" "$mpirun" -np "$np" --oversubscribe -x MASTER_PORT="${MASTER_PORT:-29531}" \
  "$python" "$here/bench/peers/moe_peer.py" "${peer_args[@]}" > "$tmp/peer.jsonl"
cat "$tmp/peer.jsonl"
peers=("$tmp/peer.jsonl")
if [[ $deepspeed == 1 ]]; then
  echo
  echo "peer: $python bench/peers/deepspeed_peer.py"
  MASTER_PORT="${MASTER_PORT:-29531}" "$mpirun" -np "$np" --oversubscribe -x MASTER_PORT="${MASTER_PORT:-29531}" \
    "$python" "$here/bench/peers/deepspeed_peer.py" "${peer_args[@]}" > "$tmp/deepspeed.jsonl"
  cat "$tmp/deepspeed.jsonl"
  peers+=("$tmp/deepspeed.jsonl")
fi
echo
"$python" - "$tmp/trustep.json" "${peers[@]}" <<'PY'
import json, sys
ours = json.load(open(sys.argv[1]))["records"]
print(f"{'peer':<28} {'T':>6} {'dtype':>5} {'world':>5} {'fwd trustep':>12} {'fwd peer':>10} {'peer/trustep':>12}"
      f" {'fwdbwd trustep':>15} {'fwdbwd peer':>12} {'peer/trustep':>12}")
for path in sys.argv[2:]:
    for p in (json.loads(l) for l in open(path) if l.startswith("{")):
        o = next((r for r in ours if r["tokens"] == p["tokens"] and r["dtype"] == p["dtype"]), None)
        if o is None:
            continue
        fb = ""
        if p.get("fwd_bwd_us") and o.get("fwd_bwd_us"):
            fb = f" {o['fwd_bwd_us']:>15.1f} {p['fwd_bwd_us']:>12.1f} {p['fwd_bwd_us'] / o['fwd_bwd_us']:>12.2f}"
        print(f"{p['peer']:<28} {p['tokens']:>6} {p['dtype']:>5} {p['world']:>5} {o['fwd_us']:>12.1f} {p['fwd_us']:>10.1f}"
              f" {p['fwd_us'] / o['fwd_us']:>12.2f}{fb}")
PY
