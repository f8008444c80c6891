#!/usr/bin/env python3
"""Plots one training run from the trainer's metrics.jsonl.

    .venv/bin/python scripts/plot_train.py METRICS.jsonl [--out DIR] [--log-y] [--layer L]

Writes into DIR (default: the metrics file's directory):
  loss.png           loss and lm_loss (and the aux losses) vs step
  trust_heatmap.png  contexts x experts trust of the final record, poisoned experts marked
  expert_load.png    routed-slot share per expert vs step for one layer (stacked), poisoned hatched

metrics.jsonl holds one JSON object per line: {"type": "step", ...} records and one
{"type": "final", ...} record (see docs). Exit status 2 on a missing or malformed file.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only; no display on build machines
import matplotlib.pyplot as plt  # noqa: E402

PROG = os.path.basename(sys.argv[0])
STEP_KEYS = ("step", "loss", "lm_loss")


def fail(msg):
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    sys.exit(2)


def load_metrics(path):
    """Returns (step records sorted by step, final record or None). Exits on bad input."""
    if not os.path.isfile(path):
        fail(f"no such file: {path}")
    steps, final = [], None
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    fail(f"{path}:{n}: not a JSON object ({e.msg})")
                if not isinstance(rec, dict) or "type" not in rec:
                    fail(f"{path}:{n}: a record needs a \"type\" field")
                if rec["type"] == "step":
                    missing = [k for k in STEP_KEYS if k not in rec]
                    if missing:
                        fail(f"{path}:{n}: step record lacks {', '.join(missing)}")
                    steps.append(rec)
                elif rec["type"] == "final":
                    final = rec
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")
    except UnicodeDecodeError:
        fail(f"{path}: not a text file")
    if not steps:
        fail(f"{path}: no step records")
    steps.sort(key=lambda r: r["step"])
    return steps, final


def poisoned_experts(steps, final):
    if final and final.get("poison_experts"):
        return sorted(set(final["poison_experts"]))
    found = set()
    for r in steps:
        found.update(p["expert"] for p in r.get("poison") or [])
    return sorted(found)


def plot_loss(steps, final, out, log_y):
    x = [r["step"] for r in steps]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(x, [r["loss"] for r in steps], label="loss", lw=1.8)
    ax.plot(x, [r["lm_loss"] for r in steps], label="lm_loss", lw=1.2)
    for key, style in (("balance_loss", ":"), ("z_loss", "--")):
        if all(key in r for r in steps):
            ax.plot(x, [r[key] for r in steps], style, label=key, lw=1)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    title = "training loss"
    if final:
        title += f" — mode {final.get('mode', '?')}, {final.get('tokens_per_s', float('nan')):.0f} tok/s"
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_trust(final, poison, out):
    trust = final["trust"]  # [C][E]
    names = final.get("context_names") or [f"ctx {c}" for c in range(len(trust))]
    n_ctx, n_exp = len(trust), len(trust[0]) if trust else 0
    if n_ctx == 0 or n_exp == 0 or any(len(row) != n_exp for row in trust):
        fail("final record: \"trust\" must be a non-empty contexts x experts matrix")
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * n_exp + 2.5), max(3, 0.45 * n_ctx + 1.5)))
    im = ax.imshow(trust, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    fig.colorbar(im, ax=ax, label="trust")
    if n_exp * n_ctx <= 400:  # annotations stay readable
        for c in range(n_ctx):
            for e in range(n_exp):
                v = trust[c][e]
                ax.text(e, c, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if v > 0.6 else "white")
    ax.set_yticks(range(n_ctx), labels=names)
    ax.set_xticks(range(n_exp), labels=[f"{e}*" if e in poison else str(e) for e in range(n_exp)])
    for e in poison:
        if 0 <= e < n_exp:
            ax.add_patch(plt.Rectangle((e - 0.5, -0.5), 1, n_ctx, fill=False, ec="red", lw=2))
            ax.get_xticklabels()[e].set_color("red")
    ax.set_xlabel("expert" + (" (* poisoned, red frame)" if poison else ""))
    ax.set_title(f"trust, layer {final.get('trust_layer', 0)}, mode {final.get('mode', '?')}")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_load(steps, poison, layer, out):
    rows = [r for r in steps if r.get("load")]
    if not rows:
        print(f"{PROG}: no \"load\" in the step records; skipping {out}", file=sys.stderr)
        return False
    if layer >= len(rows[0]["load"]):
        fail(f"--layer {layer}: the records have {len(rows[0]['load'])} layers")
    n_exp = len(rows[0]["load"][layer])
    x = [r["step"] for r in rows]
    series = [[r["load"][layer][e] if e < len(r["load"][layer]) else 0.0 for r in rows] for e in range(n_exp)]
    cmap = plt.get_cmap("tab20" if n_exp > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(9, 4.8))
    polys = ax.stackplot(x, series, colors=[cmap(e % cmap.N) for e in range(n_exp)],
                         labels=[f"expert {e}" + (" (poisoned)" if e in poison else "") for e in range(n_exp)])
    for e, poly in enumerate(polys):
        if e in poison:
            poly.set_hatch("//")
            poly.set_edgecolor("red")
            poly.set_linewidth(1.5)
    ax.axhline(1.0, color="gray", lw=0.5)
    ax.set_xlim(x[0], x[-1] if len(x) > 1 else x[0] + 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("share of routed slots")
    ax.set_title(f"expert load, layer {layer}")
    if n_exp <= 20:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


def main():
    ap = argparse.ArgumentParser(description="Plot one trustep training run from its metrics.jsonl.")
    ap.add_argument("metrics", help="metrics.jsonl written by `trustep train`")
    ap.add_argument("--out", help="output directory (default: the metrics file's directory)")
    ap.add_argument("--log-y", action="store_true", help="logarithmic loss axis")
    ap.add_argument("--layer", type=int, default=0, help="layer of expert_load.png (default 0)")
    args = ap.parse_args()

    steps, final = load_metrics(args.metrics)
    out = args.out or os.path.dirname(os.path.abspath(args.metrics))
    os.makedirs(out, exist_ok=True)
    poison = poisoned_experts(steps, final)

    written = []
    plot_loss(steps, final, os.path.join(out, "loss.png"), args.log_y)
    written.append("loss.png")
    if final and final.get("trust"):
        plot_trust(final, poison, os.path.join(out, "trust_heatmap.png"))
        written.append("trust_heatmap.png")
    else:
        print(f"{PROG}: no final record with \"trust\" (run unfinished?); skipping trust_heatmap.png",
              file=sys.stderr)
    if plot_load(steps, poison, args.layer, os.path.join(out, "expert_load.png")):
        written.append("expert_load.png")
    print(f"{PROG}: wrote {', '.join(written)} to {out}")


if __name__ == "__main__":
    try:
        main()
    except (KeyError, TypeError, IndexError, ValueError) as e:  # a record of the wrong shape
        fail(f"malformed metrics record ({type(e).__name__}: {e})")
