#!/usr/bin/env python3
"""Overlays the poisoned experts of several runs (e.g. router / blend / trust-first).

    .venv/bin/python scripts/plot_poison.py --out FILE.png [--poison-from STEP] LABEL=METRICS.jsonl ...

Two panels vs step: the traffic share of the poisoned experts (summed over them; dashed: the
share they would get under uniform routing) and their effective trust (mean over them).
Steps whose "poison" list is empty are gaps. Exit status 2 on a missing or malformed file.
"""
import argparse
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only; no display on build machines
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot_train import fail, load_metrics  # noqa: E402


def poison_series(steps):
    """(steps, summed share, mean trust, uniform share or None) of one run."""
    x, share, trust, uniform = [], [], [], None
    for r in steps:
        p = r.get("poison") or []
        x.append(r["step"])
        if not p:
            share.append(math.nan)
            trust.append(math.nan)
            continue
        share.append(sum(q["share"] for q in p))
        trust.append(sum(q["trust"] for q in p) / len(p))
        if uniform is None and r.get("load"):
            uniform = len(p) / len(r["load"][0])
    return x, share, trust, uniform


def main():
    ap = argparse.ArgumentParser(description="Overlay the poisoned-expert traffic and trust of several runs.")
    ap.add_argument("runs", nargs="+", metavar="LABEL=METRICS.jsonl")
    ap.add_argument("--out", required=True, help="output image (e.g. poison.png)")
    ap.add_argument("--poison-from", type=int, help="step at which poisoning starts (vertical line)")
    args = ap.parse_args()

    runs = []
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            fail(f"'{spec}': expected LABEL=METRICS.jsonl")
        steps, _ = load_metrics(path)
        x, share, trust, uniform = poison_series(steps)
        if all(math.isnan(s) for s in share):
            fail(f"{path}: no step record has a non-empty \"poison\" list (run without poisoning?)")
        runs.append((label, x, share, trust, uniform))

    fig, (ax_s, ax_t) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    for label, x, share, trust, _ in runs:
        ax_s.plot(x, share, label=label, lw=1.5)
        ax_t.plot(x, trust, label=label, lw=1.5)
    uniform = next((u for *_, u in runs if u is not None), None)
    if uniform is not None:
        ax_s.axhline(uniform, color="gray", ls="--", lw=1, label="uniform share")
    ax_t.axhline(0.5, color="gray", ls=":", lw=1, label="trust prior")
    for ax in (ax_s, ax_t):
        if args.poison_from is not None:
            ax.axvline(args.poison_from, color="red", lw=1, label="poison starts")
        ax.grid(alpha=0.3)
    ax_t.set_xlim(min(r[1][0] for r in runs), max(r[1][-1] for r in runs))  # whole runs, not just poisoned steps
    ax_s.set_ylabel("poisoned experts' traffic share")
    ax_s.set_ylim(bottom=0)
    ax_t.set_ylabel("poisoned experts' trust")
    ax_t.set_ylim(0, 1)
    ax_t.set_xlabel("step")
    ax_s.legend(fontsize=8)
    ax_t.legend(fontsize=8)
    ax_s.set_title("poisoned experts: traffic and trust")
    fig.tight_layout()
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    plt.close(fig)
    print(f"{os.path.basename(sys.argv[0])}: wrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except (KeyError, TypeError, IndexError, ValueError) as e:  # a record of the wrong shape
        fail(f"malformed metrics record ({type(e).__name__}: {e})")
