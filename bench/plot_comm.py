#!/usr/bin/env python3
"""Plot `trustep bench comm --json` results: GB/s and the trustep/raw ratio vs bytes per peer.

    python bench/plot_comm.py b2.json b4.json -o comm.png

One column per skew (uniform, hot). Top row: GB/s per rank (bytes each rank sends / time)
of trustep (solid) and of the raw MPI_Alltoallv reference (dashed), one colour per input
file. Bottom row: vs_raw_ratio = raw_us / trustep_us (1.0 = as fast as the reference,
above 1 = faster). Needs matplotlib (`pip install matplotlib`).
"""

import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402


def human_bytes(b, _pos=None):
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= scale:
            v = b / scale
            return f"{v:g} {unit}"
    return f"{b:g} B"


def load(path):
    with open(path) as f:
        doc = json.load(f)
    if doc.get("benchmark") != "comm" or "records" not in doc:
        sys.exit(f"plot_comm.py: {path} is not a `trustep bench comm --json` file")
    return doc


def default_label(doc):
    return f"W={doc['world']} {doc['backend']} {doc['dtype']} h={doc['hidden']}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", help="bench comm --json output files")
    ap.add_argument("-o", "--out", default="bench-comm.png", help="PNG to write (default: %(default)s)")
    ap.add_argument("--label", action="append", default=[],
                    help="legend label per input file, in order (default: world, backend, dtype, hidden)")
    ap.add_argument("--title", default="trustep bench comm: all_to_all_v vs raw MPI_Alltoallv")
    args = ap.parse_args()
    if args.label and len(args.label) != len(args.json):
        ap.error(f"{len(args.label)} --label given for {len(args.json)} files")

    docs = [load(p) for p in args.json]
    plot(docs, args.label or [default_label(d) for d in docs], args.out, args.title)


def plot(docs, labels, out, title):
    """Draws the figure for bench comm documents `docs` (one legend label each) into `out`."""
    skews = []
    for d in docs:
        for r in d["records"]:
            if r["skew"] not in skews:
                skews.append(r["skew"])

    fig, axes = plt.subplots(2, len(skews), figsize=(6 * len(skews), 8), squeeze=False, sharex="col")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for col, skew in enumerate(skews):
        bw, ratio = axes[0][col], axes[1][col]
        for i, (doc, label) in enumerate(zip(docs, labels)):
            recs = sorted((r for r in doc["records"] if r["skew"] == skew), key=lambda r: r["bytes_per_peer"])
            if not recs:
                continue
            x = [r["bytes_per_peer"] for r in recs]
            c = colours[i % len(colours)]
            bw.plot(x, [r["trustep_GBps"] for r in recs], "o-", color=c, label=f"{label} trustep")
            bw.plot(x, [r["raw_GBps"] for r in recs], "s--", color=c, alpha=0.7, label=f"{label} raw")
            ratio.plot(x, [r["vs_raw_ratio"] for r in recs], "o-", color=c, label=label)
        fractions = sorted({d["hot_fraction"] for d in docs})
        suffix = f" (hot-fraction {fractions[0]:g} to rank 0)" if skew == "hot" and len(fractions) == 1 else ""
        bw.set_title(f"skew {skew}{suffix}")
        bw.set_ylabel("GB/s per rank (sent bytes / time)")
        ratio.set_ylabel("raw_us / trustep_us")
        ratio.axhline(1.0, color="grey", linewidth=1, linestyle=":")
        ratio.set_xlabel("mean bytes per peer")
        lo, hi = ratio.get_ylim()
        ratio.set_ylim(min(lo, 0.0), max(hi, 1.1))
        for ax in (bw, ratio):
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(human_bytes))
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
