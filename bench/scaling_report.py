#!/usr/bin/env python3
"""Merge the JSON files of launch/scaling.sh into DIR/scaling.csv, DIR/scaling.json and DIR/tables.md.

    python bench/scaling_report.py runs/scaling

Reads comm-npN.json, layer-{weak,strong}-npN.json, peer-{weak,strong}-npN.jsonl,
train-{weak,strong}-npN.json, qwen3-npN.json and select.json (whichever exist). Derived values:

  weak scaling efficiency   = time(N_min) / time(N)              (the same work per rank)
  strong scaling efficiency = time(N_min) * N_min / (time(N) * N) (the same global work)
  throughput_ratio          = tokens/s over all ranks at N / at N_min (the machine does not grow with N
                              here: on 2 cores, 1.0 means expert parallelism costs nothing)
  peer_ratio                = peer time / trustep time (> 1: trustep faster); deepspeed_ratio the same
                              for DeepSpeed-MoE (deepspeed-{weak,strong}-npN.jsonl, scaling.sh --deepspeed)

Every CSV row has the same columns; a column that does not apply to a benchmark is empty.
"""

import csv
import glob
import json
import os
import re
import sys

COLUMNS = ["benchmark", "scaling", "world", "skew", "bytes_per_peer", "tokens_per_rank", "global_tokens",
           "experts", "top_k", "mode", "dtype", "time_us", "reference", "reference_us", "ratio", "ratio_name",
           "tokens_per_s", "efficiency", "throughput_ratio", "peer_us", "peer_ratio", "deepspeed_us", "deepspeed_ratio", "a2a_share", "gemm_bound_ratio",
           "expert_weight_mib", "peak_rss_mib", "init_peak_rss_mib", "phases_us"]


def world_of(path):
    m = re.search(r"-np(\d+)\.json", path)
    return int(m.group(1)) if m else None


def load_json(path):
    with open(path) as f:
        return json.load(f)


def load_peer(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.startswith("{")]


def efficiency(rows, scaling):
    """Adds 'efficiency' to rows of one series (same benchmark and scaling), keyed by world."""
    rows = sorted(rows, key=lambda r: r["world"])
    if not rows:
        return
    base = rows[0]
    for r in rows:
        if not r["time_us"]:
            continue
        # The same machine whatever N: tokens/s over all ranks relative to the smallest N. On a
        # fixed set of cores this, not the classical efficiency, says what expert parallelism costs.
        if r.get("tokens_per_s") and base.get("tokens_per_s"):
            r["throughput_ratio"] = r["tokens_per_s"] / base["tokens_per_s"]
        if scaling == "weak":
            r["efficiency"] = base["time_us"] / r["time_us"]
        else:
            r["efficiency"] = base["time_us"] * base["world"] / (r["time_us"] * r["world"])


def comm_rows(d):
    rows = []
    for path in sorted(glob.glob(os.path.join(d, "comm-np*.json"))):
        doc = load_json(path)
        for r in doc["records"]:
            rows.append({"benchmark": "comm", "world": doc["world"], "skew": r["skew"],
                         "bytes_per_peer": r["bytes_per_peer"], "dtype": doc["dtype"], "time_us": r["trustep_us"],
                         "reference": doc["reference"], "reference_us": r["raw_us"], "ratio": r["vs_raw_ratio"],
                         "ratio_name": "raw_us/trustep_us", "gbps": r["trustep_GBps"], "raw_gbps": r["raw_GBps"]})
    return rows


def layer_rows(d):
    rows = []
    for scaling in ("weak", "strong"):
        series = []
        for path in sorted(glob.glob(os.path.join(d, f"layer-{scaling}-np*.json"))):
            doc = load_json(path)
            peer_path = os.path.join(d, f"peer-{scaling}-np{doc['world']}.jsonl")
            peers = load_peer(peer_path) if os.path.exists(peer_path) else []
            ds_path = os.path.join(d, f"deepspeed-{scaling}-np{doc['world']}.jsonl")
            ds = load_peer(ds_path) if os.path.exists(ds_path) else []
            for r in doc["records"]:
                t = r["fwd_bwd_us"] or r["fwd_us"]
                g = r["gemm_fwd_bwd_us"] or r["gemm_fwd_us"]
                p = next((p for p in peers if p["tokens"] == r["tokens"] and p["dtype"] == r["dtype"]), None)
                peer_us = (p.get("fwd_bwd_us") or p.get("fwd_us")) if p else None
                q = next((q for q in ds if q["tokens"] == r["tokens"] and q["dtype"] == r["dtype"]), None)
                ds_us = (q.get("fwd_bwd_us") or q.get("fwd_us")) if q else None
                series.append({"benchmark": "layer", "scaling": scaling, "world": doc["world"],
                               "tokens_per_rank": r["tokens"], "global_tokens": r["tokens"] * doc["world"],
                               "experts": r["experts"], "top_k": r["top_k"], "dtype": r["dtype"], "time_us": t,
                               "reference": "expert GEMMs (same rows)", "reference_us": g,
                               "ratio": r["gemm_bound_ratio"], "ratio_name": "gemm_bound_ratio",
                               "tokens_per_s": r["tokens"] * doc["world"] / (t * 1e-6) if t else None,
                               "peer_us": peer_us, "peer_ratio": peer_us / t if peer_us and t else None,
                               "deepspeed_us": ds_us, "deepspeed_ratio": ds_us / t if ds_us and t else None,
                               "a2a_share": r["a2a_share"], "gemm_bound_ratio": r["gemm_bound_ratio"],
                               "expert_weight_mib": r.get("expert_weight_mib"), "peak_rss_mib": r.get("peak_rss_mib"),
                               "phases_us": r.get("phase_us"), "raw_a2a_us": r["raw_a2a_us"],
                               "fwd_us": r["fwd_us"]})
        efficiency(series, scaling)
        rows += series
    return rows


def train_rows(d):
    rows = []
    for scaling in ("weak", "strong"):
        series = []
        for path in sorted(glob.glob(os.path.join(d, f"train-{scaling}-np*.json"))):
            doc = load_json(path)
            if doc.get("benchmark") != "train":
                continue  # a Chrome trace
            for r in doc["records"]:
                series.append({"benchmark": "train", "scaling": scaling, "world": r["world"],
                               "tokens_per_rank": r["batch"] * r["seq_len"], "global_tokens": r["tokens_per_step"],
                               "experts": r["experts"], "top_k": r["top_k"], "mode": r["mode"], "dtype": r["dtype"],
                               "time_us": r["step_us"], "reference": "bare all-to-alls of the step",
                               "reference_us": r["bare_exchange_us"], "ratio": r["exchange_share_ratio"],
                               "ratio_name": "exchange_share_ratio", "tokens_per_s": r["tokens_per_s"],
                               "peak_rss_mib": r["peak_rss_mib"], "phases_us": r["phase_us"],
                               "exchange_overhead": r["exchange_overhead_ratio"]})
        efficiency(series, scaling)
        rows += series
    return rows


def qwen_rows(d):
    rows = []
    for path in sorted(glob.glob(os.path.join(d, "qwen3-np*.json"))):
        doc = load_json(path)
        for r in doc["records"]:
            rows.append({"benchmark": "qwen3-layer", "world": doc["world"], "tokens_per_rank": r["tokens"],
                         "global_tokens": r["tokens"] * doc["world"], "experts": r["experts"], "top_k": r["top_k"],
                         "dtype": r["dtype"], "time_us": r["fwd_us"], "reference": "expert GEMMs (same rows)",
                         "reference_us": r["gemm_fwd_us"], "ratio": r["gemm_bound_ratio"],
                         "ratio_name": "gemm_bound_ratio", "tokens_per_s": r["tokens_per_s"] * doc["world"],
                         "a2a_share": r["a2a_share"], "gemm_bound_ratio": r["gemm_bound_ratio"],
                         "expert_weight_mib": r.get("expert_weight_mib"), "peak_rss_mib": r.get("peak_rss_mib"),
                         "init_peak_rss_mib": r.get("init_peak_rss_mib"), "phases_us": r.get("phase_us"),
                         "hidden": r["hidden"], "ffn": r["ffn"]})
    return rows


def select_rows(d):
    path = os.path.join(d, "select.json")
    if not os.path.exists(path):
        return []
    doc = load_json(path)
    rows = []
    for r in doc["records"]:
        rows.append({"benchmark": "select", "world": doc["world"], "tokens_per_rank": r["tokens"],
                     "experts": r["experts"], "top_k": r["top_k"], "mode": r["mode"],
                     "tokens_per_s": r["trustep_tokens_per_s"], "reference": "Python prototype",
                     "ratio": r["speedup_vs_prototype"], "ratio_name": "speedup_vs_prototype",
                     "host_loop_ratio": r["speedup_vs_host_loop"],
                     "prototype_tokens_per_s": r["prototype_tokens_per_s"],
                     "host_loop_tokens_per_s": r["host_loop_tokens_per_s"]})
    return rows


def fmt(v, digits=2):
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def tables(rows):
    """Markdown tables for docs/benchmarks.md."""
    out = []
    comm = [r for r in rows if r["benchmark"] == "comm"]
    if comm:
        out += ["### all-to-all-v vs raw MPI_Alltoallv (bf16 rows of 1024)", "",
                "| world | skew | bytes/peer | trustep µs | raw µs | trustep GB/s | ratio |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in comm:
            out.append(f"| {r['world']} | {r['skew']} | {r['bytes_per_peer']} | {fmt(r['time_us'], 1)} | "
                       f"{fmt(r['reference_us'], 1)} | {fmt(r['gbps'])} | {fmt(r['ratio'], 3)} |")
        out.append("")
    for bench, title in (("layer", "MoE layer forward+backward (H 512, F 1024, k 2, fp32)"),
                         ("train", "training step (configs/tiny.ini model)")):
        sel = [r for r in rows if r["benchmark"] == bench]
        if not sel:
            continue
        out += [f"### {title}", "",
                "| scaling | world | tokens/rank | time ms | reference | ref ms | ratio | tokens/s (all ranks) | "
                "efficiency | throughput vs N_min | peer ms | peer/trustep | DeepSpeed ms | DeepSpeed/trustep |",
                "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sel:
            out.append(f"| {r['scaling']} | {r['world']} | {r['tokens_per_rank']} | {fmt(r['time_us'] / 1e3)} | "
                       f"{r['reference']} | {fmt(r['reference_us'] / 1e3)} | {r['ratio_name']} {fmt(r['ratio'], 3)} | "
                       f"{fmt(r['tokens_per_s'], 0)} | {fmt(r.get('efficiency'))} | {fmt(r.get('throughput_ratio'))} | "
                       f"{fmt(r['peer_us'] / 1e3 if r.get('peer_us') else None)} | {fmt(r.get('peer_ratio'))} | "
                       f"{fmt(r['deepspeed_us'] / 1e3 if r.get('deepspeed_us') else None)} | "
                       f"{fmt(r.get('deepspeed_ratio'))} |")
        out.append("")
    qwen = [r for r in rows if r["benchmark"] == "qwen3-layer"]
    if qwen:
        out += ["### qwen3-30b-a3b layer shape (H 2048, F 768, E 128, k 8, bf16), forward", "",
                "| world | tokens/rank | fwd ms | GEMM ms | gemm_bound_ratio | a2a_share | expert weights MiB/rank | "
                "peak RSS MiB/rank (running) | (building) |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in qwen:
            out.append(f"| {r['world']} | {r['tokens_per_rank']} | {fmt(r['time_us'] / 1e3)} | "
                       f"{fmt(r['reference_us'] / 1e3)} | {fmt(r['ratio'], 3)} | {fmt(r['a2a_share'], 3)} | "
                       f"{fmt(r['expert_weight_mib'], 0)} | {fmt(r['peak_rss_mib'], 0)} | {fmt(r.get('init_peak_rss_mib'), 0)} |")
        out.append("")
    sel = [r for r in rows if r["benchmark"] == "select"]
    if sel:
        out += ["### selector (one process)", "",
                "| T | E | k | mode | trustep tok/s | vs prototype | vs host loop |", "|---:|---:|---:|---|---:|---:|---:|"]
        for r in sel:
            out.append(f"| {r['tokens_per_rank']} | {r['experts']} | {r['top_k']} | {r['mode']} | "
                       f"{fmt(r['tokens_per_s'] / 1e6)} M | {fmt(r['ratio'], 1)}× | {fmt(r['host_loop_ratio'])}× |")
        out.append("")
    return "\n".join(out)


def main():
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        sys.exit("usage: scaling_report.py DIR  (the --out directory of launch/scaling.sh)")
    d = sys.argv[1]
    rows = comm_rows(d) + layer_rows(d) + train_rows(d) + qwen_rows(d) + select_rows(d)
    if not rows:
        sys.exit(f"scaling_report.py: no benchmark JSON files in {d}")
    with open(os.path.join(d, "scaling.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()})
    with open(os.path.join(d, "scaling.json"), "w") as f:
        json.dump({"rows": rows}, f, indent=1)
    md = tables(rows)
    with open(os.path.join(d, "tables.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    print(f"wrote {d}/scaling.csv ({len(rows)} rows), scaling.json, tables.md")


if __name__ == "__main__":
    main()
