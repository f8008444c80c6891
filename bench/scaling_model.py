#!/usr/bin/env python3
"""An alpha-beta model of the MoE all-to-all, fitted to this machine and projected to 8-1024 GPUs.

    python bench/scaling_model.py runs/scaling        # writes DIR/model.md and DIR/model_scaling.png

THIS IS A MODEL, NOT A MEASUREMENT. Two parts:

1. Local check. The form of the model for one world size W,
       t(S) = a + S (W - 1) / W / B
   (a fixed cost per call, and the bytes that leave the rank over a link of bandwidth B;
   S = bytes each rank sends, itself included), is fitted (least squares of the relative error,
   coefficients >= 0) to the `bench comm` points of this run (uniform skew, raw MPI_Alltoallv and
   trustep, per measured world size: the ranks share this machine's cores, so B is not a
   per-link constant across W here), and the table gives measured vs modelled time per point.

2. Projection. For N GPUs in nodes of G = 8 with NVLink inside a node and InfiniBand between
   nodes, with the documented parameters below, uniform routing sends (G - 1)/N of a rank's bytes
   over NVLink and (N - G)/N over InfiniBand; both run at once, so
       t_a2a(N, S) = a + b_nv (min(N, G) - 1) + b_ib max(0, N - G)
                     + max(S (min(N, G) - 1) / N / B_nv, S max(0, N - G) / N / B_ib)
   One MoE layer step (forward + backward) of a model shape with T tokens per GPU, top-k, hidden H,
   expert FFN F, in bf16: 4 exchanges of S = T k H 2 bytes (dispatch, combine, and their
   backward), and expert GEMMs of 3 x 2 x 3 T k H F FLOPs (forward + twice for backward) at the
   achieved GPU rate. Expert parallelism spans min(N, E) GPUs (one expert per GPU at most); beyond
   E the extra GPUs are data-parallel replicas and the exchange stops growing.
   Reported: a2a time, layer time without overlap (GEMM + a2a) and with perfect overlap
   (max(GEMM, a2a)), and weak-scaling efficiency t(8) / t(N).
"""

import glob
import json
import os
import sys

import numpy as np

# Documented hardware parameters (H100/H200 SXM nodes, 8 GPUs, one 400 Gb/s NIC per GPU).
PARAMS = {
    "gpus_per_node": 8,
    # NVLink 4 through NVSwitch: 450 GB/s per GPU per direction peak; all-to-all kernels reach
    # ~75-80 % of the link (DeepEP reports 153 GB/s of H800's 200 GB/s and 726 GB/s of NVLink 5's
    # 900 GB/s): 0.75 x 450.
    "nvlink_GBps": 0.75 * 450.0,
    # InfiniBand NDR 400 Gb/s = 50 GB/s per direction per GPU; RDMA all-to-all reaches ~85 %
    # (DeepEP V1: 43-58 GB/s "RDMA bandwidth" on CX7 400 Gb/s).
    "ib_GBps": 0.85 * 50.0,
    "a_us": 10.0,      # fixed cost per exchange: launch, counts exchange, synchronisation
    "b_nv_us": 0.1,    # per NVLink peer (message issue)
    "b_ib_us": 0.5,    # per InfiniBand peer (work requests, completions)
    # Achieved dense bf16 GEMM rate of an H100/H200 on expert-sized GEMMs (989 TFLOP/s peak; grouped
    # GEMMs of this size reach ~50 %).
    "gemm_TFLOPs": 0.5 * 989.0,
}

SHAPES = [
    # name, hidden, expert ffn, experts, top-k, tokens per GPU
    ("qwen3-30b-a3b", 2048, 768, 128, 8, 4096),
    ("deepseek-v3-like", 7168, 2048, 256, 8, 4096),
]
GPUS = [8, 16, 32, 64, 128, 256, 512, 1024]


def relative_nnls(X, y):
    """Coefficients >= 0 minimising the sum of squared *relative* errors ((X c - y) / y)^2.

    Relative, so that 5 µs and 10 ms points count alike; non-negative, so that a cost cannot
    come out negative. Three unknowns: every subset of them is tried (an exact active-set search).
    """
    A, b = X / y[:, None], np.ones_like(y)
    best, best_err = np.zeros(X.shape[1]), np.inf
    for mask in range(1, 1 << X.shape[1]):
        cols = [j for j in range(X.shape[1]) if mask >> j & 1]
        c, *_ = np.linalg.lstsq(A[:, cols], b, rcond=None)
        if (c < 0).any():
            continue
        full = np.zeros(X.shape[1])
        full[cols] = c
        err = float(((A @ full - b) ** 2).sum())
        if err < best_err:
            best, best_err = full, err
    return best


def fit_local(d):
    """Least squares of t = a + b (W-1) + S (W-1)/W / B over the uniform comm points."""
    points = []
    for path in sorted(glob.glob(os.path.join(d, "comm-np*.json"))):
        with open(path) as f:
            doc = json.load(f)
        W = doc["world"]
        for r in doc["records"]:
            if r["skew"] != "uniform":
                continue
            S = r["rows_per_rank"] * r["row_bytes"]
            points.append((W, S, r["raw_us"], r["trustep_us"]))
    if len({p[0] for p in points}) < 1 or len(points) < 3:
        return None, []
    # One fit per world size: here the ranks share 2 cores, so going from 2 to 4 ranks halves the
    # memory bandwidth per rank and the per-peer cost is not a constant (on a cluster each GPU
    # brings its own links; there b and B are properties of the links, as in the projection).
    fits, rows = {}, []
    for W in sorted({p[0] for p in points}):
        mine = [p for p in points if p[0] == W]
        X = np.array([[1.0, S * (W - 1.0) / W] for _, S, _, _ in mine])
        for name, col in (("raw", 2), ("trustep", 3)):
            fits[(W, name)] = relative_nnls(X, np.array([p[col] for p in mine]))
        for (_, S, raw, ours), x in zip(mine, X):
            rows.append((W, S, raw, float(x @ fits[(W, "raw")]), ours, float(x @ fits[(W, "trustep")])))
    return fits, rows


def a2a_us(N, S, p=PARAMS):
    G = p["gpus_per_node"]
    intra = min(N, G) - 1
    inter = max(0, N - G)
    t_nv = S * intra / N / (p["nvlink_GBps"] * 1e3)  # bytes / (GB/s) -> µs with 1e3 bytes per µs per GB/s
    t_ib = S * inter / N / (p["ib_GBps"] * 1e3)
    return p["a_us"] + p["b_nv_us"] * intra + p["b_ib_us"] * inter + max(t_nv, t_ib)


def project(p=PARAMS):
    out = []
    for name, H, F, E, k, T in SHAPES:
        S = T * k * H * 2  # bf16 rows, bytes each rank sends per exchange
        gemm_us = 3 * 2 * 3 * T * k * H * F / (p["gemm_TFLOPs"] * 1e6)
        base = None
        for N in GPUS:
            ep = min(N, E)
            a2a = 4 * a2a_us(ep, S, p)
            serial = gemm_us + a2a
            overlap = max(gemm_us, a2a)
            if base is None:
                base = (serial, overlap)
            out.append({"shape": name, "gpus": N, "ep": ep, "bytes_per_exchange": S, "a2a_us": a2a,
                        "gemm_us": gemm_us, "layer_us": serial, "layer_overlap_us": overlap,
                        "eff": base[0] / serial, "eff_overlap": base[1] / overlap,
                        "a2a_GBps": 4 * S * (ep - 1) / ep / a2a / 1e3})
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: scaling_model.py DIR  (the --out directory of launch/scaling.sh)")
    d = sys.argv[1]
    lines = ["# All-to-all scaling model (a model, not a measurement)", "",
             "Produced by `bench/scaling_model.py`; see docs/benchmarks.md for the derivation.", ""]
    fits, rows = fit_local(d)
    if fits:
        lines += ["## Local check: t = a + S (W-1)/W / B fitted per world size to this run's `bench comm` "
                  "points (uniform skew)", "",
                  "| world | fit | a (µs) | B (GB/s) |", "|---:|---|---:|---:|"]
        for (W, name), (a, c) in fits.items():
            lines.append(f"| {W} | {name} | {a:.1f} | {1e-3 / c if c > 0 else float('inf'):.2f} |")
        lines += ["", "| world | bytes sent per rank | raw µs | model µs | error | trustep µs | model µs | error |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        errors = []
        for W, S, raw, mraw, ours, mours in rows:
            e1, e2 = (mraw - raw) / raw, (mours - ours) / ours
            errors += [abs(e1), abs(e2)]
            lines.append(f"| {W} | {S} | {raw:.1f} | {mraw:.1f} | {100 * e1:+.0f} % | {ours:.1f} | {mours:.1f} | "
                         f"{100 * e2:+.0f} % |")
        lines += ["", f"Median absolute error {100 * float(np.median(errors)):.0f} %, "
                      f"max {100 * max(errors):.0f} % over {len(errors)} points.", ""]
    else:
        lines += ["(no `bench comm` points with 2 or more world sizes in this directory: local check skipped)", ""]

    lines += ["## Projection to GPU clusters (documented parameters, not fitted)", "",
              "| parameter | value |", "|---|---|"]
    lines += [f"| {k} | {v:g} |" for k, v in PARAMS.items()]
    proj = project()
    for name, H, F, E, k, T in SHAPES:
        lines += ["", f"### {name}: H {H}, F {F}, E {E}, top-{k}, {T} tokens per GPU, bf16", "",
                  "| GPUs | EP | MiB per exchange | 4 a2a ms | a2a GB/s | GEMM ms | layer ms (serial) | efficiency | "
                  "layer ms (overlap) | efficiency |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in proj if r["shape"] == name):
            lines.append(f"| {r['gpus']} | {r['ep']} | {r['bytes_per_exchange'] / 2**20:.0f} | {r['a2a_us'] / 1e3:.2f} | "
                         f"{r['a2a_GBps']:.0f} | {r['gemm_us'] / 1e3:.2f} | {r['layer_us'] / 1e3:.2f} | "
                         f"{r['eff']:.2f} | {r['layer_overlap_us'] / 1e3:.2f} | {r['eff_overlap']:.2f} |")
    with open(os.path.join(d, "model.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for name, *_ in SHAPES:
        s = [r for r in proj if r["shape"] == name]
        axes[0].plot([r["gpus"] for r in s], [r["a2a_us"] / 1e3 for r in s], "o-", label=f"{name}: 4 exchanges")
        axes[0].plot([r["gpus"] for r in s], [r["gemm_us"] / 1e3 for r in s], ":", label=f"{name}: expert GEMMs")
        axes[1].plot([r["gpus"] for r in s], [r["eff"] for r in s], "o-", label=f"{name}: serial")
        axes[1].plot([r["gpus"] for r in s], [r["eff_overlap"] for r in s], "s--", label=f"{name}: overlapped")
    axes[0].set_ylabel("ms per layer step (model)")
    axes[1].set_ylabel("weak-scaling efficiency t(8)/t(N) (model)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("GPUs (8 per node, NVLink inside, 400 Gb/s InfiniBand between)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("MODEL: alpha-beta all-to-all projection (not measured)")
    fig.tight_layout()
    path = os.path.join(d, "model_scaling.png")
    fig.savefig(path, dpi=100)
    print(f"wrote {os.path.join(d, 'model.md')}, {path}")


if __name__ == "__main__":
    main()
