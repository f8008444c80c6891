#!/usr/bin/env bash
# Sets up, builds and runs the main job: the default training run (configs/tiny.ini, 2 ranks,
# about a minute on 2 cores), then greedy generation from its checkpoint.
# Writes runs/tiny/: metrics.jsonl, loss.png, trust_heatmap.png, expert_load.png, checkpoints/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/scripts/setup.sh"
launch/local.sh -n 2 train --config configs/tiny.ini "$@"
launch/local.sh -n 2 infer --checkpoint runs/tiny/checkpoints --prompt "srt:hdbag="
