#!/usr/bin/env bash
# Scaling benchmarks over rank counts, weak and strong, with their in-run references, then one
# CSV + JSON and the plots (docs/benchmarks.md "Scaling").
#
#   launch/scaling.sh [--ranks 1,2,4] [--out DIR] [--quick] [--no-peer] [--deepspeed] [--no-select] [--no-qwen]
#
# Per rank count N (each run is `launch/local.sh -n N trustep bench ...`):
#   comm    bench comm: bf16 rows of 1024, 4 KiB .. 4 MiB per peer, uniform and hot skew (N >= 2)
#   layer   bench layer --backward, H 512, F 1024, E = max(8, N), k 2, fp32:
#             weak:   --tokens LAYER_WEAK per rank (default 1024)
#             strong: --tokens LAYER_STRONG / N per rank (global 2048)
#           and the PyTorch peer (bench/peers/moe_peer.py) at the same points unless --no-peer;
#           --deepspeed adds DeepSpeed-MoE (bench/peers/deepspeed_peer.py, installed on demand by
#           bench/peers/setup_peers.sh)
#   train   bench train --config configs/tiny.ini (2 layers, H 128, 8 experts):
#             weak:   --batch TRAIN_WEAK per rank (default 8 sequences of 64 tokens)
#             strong: --batch TRAIN_STRONG / N (global 16)
#           the largest N also writes a Chrome trace (train-trace-npN.json)
#   qwen3   bench layer --config configs/qwen3-30b-a3b.ini (H 2048, F 768, E 128, k 8, bf16),
#           --tokens 64,256 forward: time and memory per rank at the real dimensions
# Once: bench select (--backend self) on a reduced grid, against the Python prototype and the
# C++ host loop. Then bench/scaling_report.py merges everything into DIR/scaling.csv and
# DIR/scaling.json, bench/plot_scaling.py renders DIR/*.png, and bench/scaling_model.py fits the
# alpha-beta all-to-all model to the comm points and writes DIR/model.md.
# --quick: fewer iterations, smaller points and a small selector grid (a smoke run, ~2 minutes
# on 2 idle cores).
# Environment: TRUSTEP_BIN (default build/bin/trustep), PYTHON (default .venv/bin/python).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ranks="1,2,4"
out="$root/runs/scaling"
quick=0 peer=1 deepspeed=0 select=1 qwen=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --ranks) ranks="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --no-peer) peer=0; shift ;;
    --deepspeed) deepspeed=1; shift ;;
    --no-select) select=0; shift ;;
    --no-qwen) qwen=0; shift ;;
    -h|--help) sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "scaling.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$ranks" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || { echo "scaling.sh: --ranks needs a list like 1,2,4" >&2; exit 2; }
IFS=, read -r -a counts <<< "$ranks"
python="${PYTHON:-$root/.venv/bin/python}"
export TRUSTEP_BIN="${TRUSTEP_BIN:-$root/build/bin/trustep}"
[[ -x "$TRUSTEP_BIN" ]] || { echo "scaling.sh: $TRUSTEP_BIN is not built (scripts/setup.sh)" >&2; exit 2; }
[[ -x "$python" ]] || { echo "scaling.sh: no Python at $python (scripts/setup.sh, or set PYTHON)" >&2; exit 2; }
mkdir -p "$out"
out="$(cd "$out" && pwd)"
if [[ "$(id -u)" == 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

LAYER_WEAK=1024 LAYER_STRONG=2048 TRAIN_WEAK=8 TRAIN_STRONG=16
comm_sizes="4k,16k,64k,256k,1M,4M" comm_iters=20 layer_iters=5 train_iters=5 qwen_iters=3
select_grid=(--tokens 4096,65536 --experts 8,64,128 --top-k 2,8 --iters 3)
if (( quick )); then
  comm_sizes="4k,64k,1M" comm_iters=5 layer_iters=2 train_iters=2 qwen_iters=1
  LAYER_WEAK=128 LAYER_STRONG=256 TRAIN_WEAK=2 TRAIN_STRONG=4
  select_grid=(--tokens 4096 --experts 8,64 --top-k 2 --modes router,blend --iters 1)
fi
max_n=0
for n in "${counts[@]}"; do (( n > max_n )) && max_n=$n; done
experts=$(( max_n > 8 ? max_n : 8 ))

log="$out/scaling.log"
: > "$log"
started=$SECONDS
run() {  # run NAME -- command...: logs the command and its output, fails the script on error
  local name="$1"; shift 2
  printf '\n=== %s (%ds) ===\n+ %s\n' "$name" $((SECONDS - started)) "$*" | tee -a "$log"
  "$@" 2>&1 | tee -a "$log"
}
local_sh() { "$root/launch/local.sh" "$@"; }
peer_run() {  # peer_run SCRIPT N JSONL args...: a Python peer under the same mpirun, same shapes
  local script="$1" n="$2" jsonl="$3"; shift 3
  local oversub=()
  (( n > $(nproc) )) && oversub=(--oversubscribe)
  MASTER_PORT="${MASTER_PORT:-29531}" mpirun -np "$n" "${oversub[@]}" --bind-to none -x MASTER_PORT \
    -x OMP_NUM_THREADS="$(( $(nproc) / n > 0 ? $(nproc) / n : 1 ))" \
    "$python" "$root/bench/peers/$script" "$@" > "$jsonl"
  cat "$jsonl"
}
export MASTER_PORT="${MASTER_PORT:-29531}"
if (( deepspeed )); then run "setup peers" -- env PYTHON="$python" "$root/bench/peers/setup_peers.sh"; fi

layer_args=(--hidden 512 --ffn 1024 --experts "$experts" --top-k 2 --dtype fp32 --backward --iters "$layer_iters" --warmup 1)
for n in "${counts[@]}"; do
  if (( n >= 2 )); then
    run "comm np$n" -- local_sh -n "$n" bench comm --sizes "$comm_sizes" --skew uniform,hot --dtype bf16 \
      --hidden 1024 --iters "$comm_iters" --warmup 2 --json "$out/comm-np$n.json"
  fi
  for mode in weak strong; do
    if [[ $mode == weak ]]; then t=$LAYER_WEAK; else t=$(( LAYER_STRONG / n )); fi
    run "layer $mode np$n (T $t per rank)" -- local_sh -n "$n" bench layer "${layer_args[@]}" --tokens "$t" \
      --json "$out/layer-$mode-np$n.json"
    if (( peer )); then
      run "peer layer $mode np$n" -- peer_run moe_peer.py "$n" "$out/peer-$mode-np$n.jsonl" "${layer_args[@]}" \
        --tokens "$t"
    fi
    if (( deepspeed )); then
      run "deepspeed layer $mode np$n" -- peer_run deepspeed_peer.py "$n" "$out/deepspeed-$mode-np$n.jsonl" \
        "${layer_args[@]}" --tokens "$t"
    fi
  done
  for mode in weak strong; do
    if [[ $mode == weak ]]; then b=$TRAIN_WEAK; else b=$(( TRAIN_STRONG / n > 0 ? TRAIN_STRONG / n : 1 )); fi
    trace=()
    [[ $mode == weak && $n == "$max_n" ]] && trace=(--trace "$out/train-trace-np$n.json" --trace-steps "$train_iters")
    run "train $mode np$n (batch $b per rank)" -- local_sh -n "$n" bench train --config "$root/configs/tiny.ini" \
      --experts "$experts" --batch "$b" --iters "$train_iters" --warmup-iters 2 "${trace[@]}" \
      --json "$out/train-$mode-np$n.json"
  done
  if (( qwen )); then
    run "qwen3-30b-a3b layer np$n" -- local_sh -n "$n" bench layer --config "$root/configs/qwen3-30b-a3b.ini" \
      --tokens 64,256 --iters "$qwen_iters" --warmup 1 --json "$out/qwen3-np$n.json"
  fi
done
if (( select )); then
  run "select" -- "$TRUSTEP_BIN" bench select --backend self "${select_grid[@]}" --warmup 1 --json "$out/select.json"
fi

run "report" -- "$python" "$root/bench/scaling_report.py" "$out"
run "plots" -- "$python" "$root/bench/plot_scaling.py" "$out"
run "model" -- "$python" "$root/bench/scaling_model.py" "$out"
printf '\nscaling.sh: done in %d s; results in %s (scaling.csv, scaling.json, *.png, model.md, scaling.log)\n' \
  $((SECONDS - started)) "$out" | tee -a "$log"
