#!/usr/bin/env bash
# Installs the third-party peers of `trustep bench layer` into the project's .venv, pinned, on
# demand (compare_layer.sh --deepspeed calls it; scripts/setup.sh and CI do not). Idempotent: a
# second run only checks the pinned versions (about a second). It never changes torch or numpy:
# DeepSpeed is an sdist, installed with --no-deps and --no-build-isolation against the .venv's
# torch (and the setuptools torch depends on), no ops pre-built (its MoE layer is plain PyTorch),
# and its small runtime dependencies are pinned here. Fails if torch's or numpy's version moved.
#
#   bench/peers/setup_peers.sh            # PYTHON (default <repo>/.venv/bin/python)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
[[ -x "$py" ]] || { echo "setup_peers.sh: no Python at $py (run scripts/setup.sh or set PYTHON)" >&2; exit 2; }

DEEPSPEED="deepspeed==0.19.8"
# deepspeed's requirements.txt minus torch and numpy (already pinned by scripts/setup.sh) and ninja
# (only for DeepSpeed's JIT-compiled ops: the system ninja-build and g++ from scripts/setup.sh serve).
DEPS=("einops==0.8.2" "hjson==3.1.0" "msgpack==1.2.4" "psutil==7.2.2" "py-cpuinfo==9.0.0"
      "pydantic==2.14.4" "pydantic_core==2.50.5" "annotated-types==0.8.0" "typing-inspection==0.4.5"
      "tqdm==4.70.1" "packaging")

# Prints the specs (NAME==VERSION, or NAME: any version) not installed as asked; metadata only, fast.
missing() {
  "$py" - "$@" <<'PY'
import sys
from importlib import metadata
for spec in sys.argv[1:]:
    name, _, want = spec.partition("==")
    try:
        got = metadata.version(name)
    except metadata.PackageNotFoundError:
        got = None
    if got is None or (want and got != want):
        print(spec)
PY
}
versions() { missing torch=="$1" numpy=="$2"; }

stamp="$(dirname "$(dirname "$py")")/.setup_peers-done"
read -r torch_v numpy_v < <("$py" -c 'from importlib.metadata import version as v; print(v("torch"), v("numpy"))')
installed=0
mapfile -t todo < <(missing "${DEPS[@]}")
if ((${#todo[@]})); then
  echo "[setup_peers] installing into $(dirname "$(dirname "$py")"): ${todo[*]}"
  "$py" -m pip install -q --disable-pip-version-check --no-deps "${todo[@]}"
  installed=1
fi
if [[ -n "$(missing "$DEEPSPEED")" ]]; then
  echo "[setup_peers] installing $DEEPSPEED (sdist, no ops pre-built)"
  DS_BUILD_OPS=0 DS_ACCELERATOR=cpu "$py" -m pip install -q --disable-pip-version-check \
    --no-deps --no-build-isolation "$DEEPSPEED"
  installed=1
fi
[[ -z "$(versions "$torch_v" "$numpy_v")" ]] || {
  echo "setup_peers.sh: torch/numpy changed from $torch_v/$numpy_v" >&2; exit 1; }

[[ $installed == 0 && -f "$stamp" ]] && exit 0

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
touch "$stamp"
