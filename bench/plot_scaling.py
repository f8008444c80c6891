#!/usr/bin/env python3
"""Render the PNGs of a launch/scaling.sh run (after bench/scaling_report.py).

    python bench/plot_scaling.py runs/scaling

Writes into the same directory:
  scaling_curves.png    layer and training step time and efficiency vs ranks, weak and strong,
                        with the expert-GEMM bound, the bare exchanges and the PyTorch peer
  comm_bandwidth.png    all-to-all-v GB/s and ratio vs bytes per peer (bench/plot_comm.py)
  select_throughput.png selector tokens/s per (E, k, mode): trustep, C++ host loop, Python prototype
  layer_breakdown.png   time of a layer step and of a training step by phase, per rank count
"""

import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plot_comm  # noqa: E402

LAYER_PHASES = [("moe.route", "route"), ("moe.permute", "permute"), ("moe.exchange", "exchange"),
                ("moe.experts", "experts"), ("moe.combine", "combine"), ("moe.exchange.bwd", "exchange (bwd)")]
TRAIN_PHASES = [("train.data", "data"), ("train.forward", "forward"), ("train.backward", "backward"),
                ("train.allreduce", "grad all-reduce"), ("train.optimizer", "optimizer"), ("train.trust", "trust")]


def series(rows, bench, scaling):
    return sorted((r for r in rows if r["benchmark"] == bench and r.get("scaling") == scaling),
                  key=lambda r: r["world"])


def scaling_curves(rows, out):
    fig, axes = plt.subplots(2, 4, figsize=(20, 8.5))
    for col, (bench, scaling) in enumerate((("layer", "weak"), ("layer", "strong"), ("train", "weak"),
                                            ("train", "strong"))):
        s = series(rows, bench, scaling)
        t_ax, e_ax = axes[0][col], axes[1][col]
        if not s:
            t_ax.set_visible(False)
            e_ax.set_visible(False)
            continue
        w = [r["world"] for r in s]
        t_ax.plot(w, [r["time_us"] / 1e3 for r in s], "o-", label="trustep")
        ref = "expert-GEMM bound" if bench == "layer" else "bare all-to-alls"
        t_ax.plot(w, [r["reference_us"] / 1e3 for r in s], "s--", label=ref)
        if any(r.get("peer_us") for r in s):
            t_ax.plot([r["world"] for r in s if r.get("peer_us")], [r["peer_us"] / 1e3 for r in s if r.get("peer_us")],
                      "^:", label="PyTorch peer (gloo)")
        if any(r.get("deepspeed_us") for r in s):
            t_ax.plot([r["world"] for r in s if r.get("deepspeed_us")],
                      [r["deepspeed_us"] / 1e3 for r in s if r.get("deepspeed_us")], "v-.", label="DeepSpeed-MoE (gloo)")
        per_rank = s[0]["tokens_per_rank"] if scaling == "weak" else None
        what = f"{per_rank} tokens per rank" if per_rank else f"{s[0]['global_tokens']} tokens in all"
        t_ax.set_title(f"{bench} {scaling} scaling ({what})")
        t_ax.set_ylabel("ms per step (slowest rank, median)")
        e_ax.plot(w, [r.get("efficiency") for r in s], "o-", label="efficiency")
        e_ax.plot(w, [r.get("throughput_ratio") for r in s], "s--", label="tokens/s vs smallest N (same cores)")
        e_ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
        top = max(max(r.get("efficiency") or 0, r.get("throughput_ratio") or 0) for r in s)
        e_ax.set_ylim(0, max(1.2, top * 1.1))
        e_ax.set_ylabel("scaling efficiency" + (" t1/tN" if scaling == "weak" else " t1/(N tN)"))
        e_ax.set_xlabel("ranks")
        for ax in (t_ax, e_ax):
            ax.set_xscale("log", base=2)
            ax.set_xticks(w)
            ax.set_xticklabels([str(x) for x in w])
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("trustep scaling on this machine (CPU ranks over MPI shared memory; "
                 "ranks beyond the core count are oversubscribed)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out}")


def comm_bandwidth(d, out):
    docs = []
    for path in sorted(glob.glob(os.path.join(d, "comm-np*.json")), key=lambda p: int(p.split("np")[-1][:-5])):
        with open(path) as f:
            docs.append(json.load(f))
    if docs:
        plot_comm.plot(docs, [f"{doc['world']} ranks" for doc in docs], out,
                       "all_to_all_v vs raw MPI_Alltoallv by message size")


def select_throughput(rows, out):
    s = [r for r in rows if r["benchmark"] == "select"]
    if not s:
        return
    tokens = max(r["tokens_per_rank"] for r in s)
    s = [r for r in s if r["tokens_per_rank"] == tokens]
    labels = [f"E{r['experts']} k{r['top_k']}\n{r['mode']}" for r in s]
    x = range(len(s))
    fig, ax = plt.subplots(figsize=(max(8, len(s) * 0.8), 5))
    width = 0.27
    ax.bar([i - width for i in x], [r["tokens_per_s"] for r in s], width, label="trustep Selector")
    ax.bar(list(x), [r.get("host_loop_tokens_per_s") or 0 for r in s], width, label="C++ host loop")
    ax.bar([i + width for i in x], [r.get("prototype_tokens_per_s") or 0 for r in s], width,
           label="Python prototype")
    ax.set_yscale("log")
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("tokens / s")
    ax.set_title(f"expert selection throughput, T = {tokens} tokens, one process")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out}")


def stacked(ax, s, phases, total_key, title):
    w = [str(r["world"]) for r in s]
    bottom = [0.0] * len(s)
    for key, label in phases:
        v = [(r.get("phases_us") or {}).get(key, 0) / 1e3 for r in s]
        ax.bar(w, v, bottom=bottom, label=label)
        bottom = [b + x for b, x in zip(bottom, v)]
    rest = [r[total_key] / 1e3 - b for r, b in zip(s, bottom)]
    ax.bar(w, [max(0, x) for x in rest], bottom=bottom, label="other", color="lightgrey")
    ax.set_xlabel("ranks")
    ax.set_ylabel("ms (slowest rank, median)")
    ax.set_title(title)
    ax.legend(fontsize=8)


def breakdown(rows, out):
    layer = series(rows, "layer", "weak")
    train = series(rows, "train", "weak")
    if not layer and not train:
        return
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    if layer:
        stacked(axes[0], layer, LAYER_PHASES, "time_us",
                f"MoE layer forward+backward by phase ({layer[0]['tokens_per_rank']} tokens per rank)\n"
                "other = autograd backward of route/permute/experts/combine")
    if train:
        stacked(axes[1], train, TRAIN_PHASES, "time_us",
                f"training step by phase ({train[0]['tokens_per_rank']} tokens per rank)")
        moe = [(k, v) for k, v in LAYER_PHASES]
        s = [dict(r, moe_total_us=sum((r.get("phases_us") or {}).get(k, 0) for k, _ in moe)) for r in train]
        stacked(axes[2], s, moe, "moe_total_us", "MoE spans inside the training step (all layers)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out}")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: plot_scaling.py DIR  (after bench/scaling_report.py DIR)")
    d = sys.argv[1]
    with open(os.path.join(d, "scaling.json")) as f:
        rows = json.load(f)["rows"]
    scaling_curves(rows, os.path.join(d, "scaling_curves.png"))
    comm_bandwidth(d, os.path.join(d, "comm_bandwidth.png"))
    select_throughput(rows, os.path.join(d, "select_throughput.png"))
    breakdown(rows, os.path.join(d, "layer_breakdown.png"))


if __name__ == "__main__":
    main()
