#!/usr/bin/env bash
# Installs the third-party peers of `trustep bench layer` into the project's .venv, pinned, on
# demand (compare_layer.sh --deepspeed calls it; scripts/setup.sh and CI do not). Idempotent: a
# second run only checks (~20 s, mostly importing deepspeed). It never changes torch or numpy:
# DeepSpeed is an sdist, installed with --no-deps and --no-build-isolation against the .venv's
# torch, no ops pre-built (its MoE layer is plain PyTorch), and its small runtime dependencies
# are pinned here. Fails if torch's or numpy's version moved.
#
#   bench/peers/setup_peers.sh            # PYTHON (default <repo>/.venv/bin/python)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
[[ -x "$py" ]] || { echo "setup_peers.sh: no Python at $py (run scripts/setup.sh or set PYTHON)" >&2; exit 2; }

DEEPSPEED="deepspeed==0.19.8"
# deepspeed's requirements.txt minus torch and numpy (already pinned by scripts/setup.sh) and ninja
# (only for JIT-compiled ops, which the MoE layer does not use; the system ninja-build is there anyway).
DEPS=("einops==0.8.2" "hjson==3.1.0" "msgpack==1.2.4" "psutil==7.2.2" "py-cpuinfo==9.0.0"
      "pydantic==2.14.4" "pydantic_core==2.50.5" "annotated-types==0.8.0" "typing-inspection==0.4.5"
      "tqdm==4.70.1" "packaging")

versions() { "$py" -c 'import torch, numpy; print(torch.__version__, numpy.__version__)'; }
have() {  # have NAME==VERSION: installed at exactly that version
  "$py" - "$1" <<'PY'
import sys
from importlib import metadata
name, _, want = sys.argv[1].partition("==")
try:
    got = metadata.version(name)
except metadata.PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if not want or got == want else 1)
PY
}

before="$(versions)"
missing=()
for spec in "${DEPS[@]}"; do have "$spec" || missing+=("$spec"); done
if ((${#missing[@]})); then
  echo "[setup_peers] installing into $(dirname "$(dirname "$py")"): ${missing[*]}"
  "$py" -m pip install -q --disable-pip-version-check --no-deps "${missing[@]}"
fi
if ! have "$DEEPSPEED"; then
  echo "[setup_peers] installing $DEEPSPEED (sdist, no ops pre-built)"
  DS_BUILD_OPS=0 DS_ACCELERATOR=cpu "$py" -m pip install -q --disable-pip-version-check \
    --no-deps --no-build-isolation "$DEEPSPEED"
fi
after="$(versions)"
[[ "$before" == "$after" ]] || { echo "setup_peers.sh: torch/numpy changed: $before -> $after" >&2; exit 1; }

# DeepSpeed's torch.distributed wrapper JIT-builds its shared-memory all-reduce op (g++ and ninja,
# minutes here, cached under ~/.cache/torch_extensions) on its first init; the MoE layer does not
# use it, but every init loads it. Build it here rather than inside the first benchmark run.
DS_ACCELERATOR=cpu "$py" - <<'PY'
import contextlib, sys
import deepspeed, deepspeed.moe.layer
from deepspeed.comm.torch import build_shm_op
with contextlib.redirect_stdout(sys.stderr):
    build_shm_op()
print("[setup_peers] deepspeed", deepspeed.__version__, "ok")
PY
