#!/usr/bin/env python3
"""Soak: a long `trustep train` under mpirun, every rank's resident memory sampled from /proc.

  soak.py [--np 2] [--steps 2000] [--warmup-steps 200] [--max-growth-mib 24] [--out runs/soak]
          [--trustep build/bin/trustep] [-- extra train options]

Trains the tiny preset (configs/tiny.ini; checkpoints every 500 steps) and samples VmRSS of each
rank twice a second, with the step reached (rank 0's metrics.jsonl). After warm-up, memory must
stay flat: for every rank, the RSS at the end and the highest RSS after warm-up may exceed the
RSS at warm-up by at most --max-growth-mib. Writes OUT/soak.csv (the samples), OUT/soak.json (the
summary), OUT/soak.png (RSS against step); prints one line per rank; exits 1 when memory grew
or the run failed.
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rank_pids(marker):
    """{rank: pid} of the trustep processes whose command line holds `marker`."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            if not cmd or not cmd[0].endswith(b"trustep") or marker.encode() not in cmd:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            if b"OMPI_COMM_WORLD_RANK" in env:
                found[int(env[b"OMPI_COMM_WORLD_RANK"])] = int(entry)
        except (OSError, ValueError):
            continue
    return found


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def steps_done(metrics):
    try:
        with open(metrics, "rb") as f:
            return sum(1 for line in f if line.startswith(b'{"') and b'"type":"step"' in line)
    except OSError:
        return 0


def slope_per_1000(points):
    """Least-squares slope of (step, rss) in MiB per 1000 steps."""
    if len(points) < 2:
        return 0.0
    xs, ys = zip(*points)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 1000 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--warmup-steps", type=int, default=200)
    ap.add_argument("--max-growth-mib", type=float, default=24.0)
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "soak"))
    ap.add_argument("--trustep", default=os.path.join(ROOT, "build", "bin", "trustep"))
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("extra", nargs="*", help="more `trustep train` options (after --)")
    a = ap.parse_args()
    if a.warmup_steps >= a.steps:
        ap.error(f"--warmup-steps ({a.warmup_steps}) must be below --steps ({a.steps})")
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    metrics = os.path.join(out, "metrics.jsonl")
    for stale in (metrics, os.path.join(out, "soak.csv")):
        if os.path.exists(stale):
            os.remove(stale)
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(a.np), a.trustep, "train",
           "--config", os.path.join(ROOT, "configs", "tiny.ini"), "--steps", str(a.steps), "--out", out,
           "--log-every", "250", "--checkpoint-every", "500", "--no-plots", *a.extra]
    print("soak:", " ".join(cmd), flush=True)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    t0 = time.monotonic()
    job = subprocess.Popen(cmd, env=env)
    samples = []  # (seconds, step, [rss per rank])
    pids = {}
    while job.poll() is None:
        if len(pids) < a.np:
            pids = rank_pids(out)
        if len(pids) == a.np:
            rss = [rss_mib(pids[r]) for r in range(a.np)]
            if all(v is not None for v in rss):
                samples.append((time.monotonic() - t0, steps_done(metrics), rss))
        time.sleep(a.interval)
    wall = time.monotonic() - t0
    if job.returncode != 0:
        print(f"soak: FAIL: the training run exited {job.returncode}", file=sys.stderr)
        return 1

    with open(os.path.join(out, "soak.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seconds", "step"] + [f"rss_mib_rank{r}" for r in range(a.np)])
        for t, step, rss in samples:
            w.writerow([f"{t:.2f}", step] + [f"{v:.1f}" for v in rss])

    after = [s for s in samples if s[1] >= a.warmup_steps]
    if len(after) < 10:
        print(f"soak: FAIL: only {len(after)} samples after warm-up", file=sys.stderr)
        return 1
    ok = True
    ranks = []
    for r in range(a.np):
        warm = statistics.median(s[2][r] for s in after[: max(3, len(after) // 20)])
        end = statistics.median(s[2][r] for s in after[-max(3, len(after) // 20):])
        peak = max(s[2][r] for s in after)
        first = min(s[2][r] for s in samples)
        slope = slope_per_1000([(s[1], s[2][r]) for s in after])
        good = end - warm <= a.max_growth_mib and peak - warm <= a.max_growth_mib
        ok = ok and good
        ranks.append({"rank": r, "rss_first_mib": first, "rss_warm_mib": warm, "rss_end_mib": end,
                      "rss_peak_after_warmup_mib": peak, "growth_mib": end - warm,
                      "slope_mib_per_1000_steps": slope, "ok": good})
        print(f"soak: rank {r}: RSS {first:.0f} MiB at start, {warm:.1f} at step {a.warmup_steps} (warm), "
              f"{end:.1f} at the end, peak {peak:.1f} after warm-up; growth {end - warm:+.1f} MiB "
              f"({slope:+.2f} MiB per 1000 steps; limit {a.max_growth_mib:g}) {'ok' if good else 'GREW'}")
    summary = {"np": a.np, "steps": a.steps, "warmup_steps": a.warmup_steps, "wall_s": wall,
               "samples": len(samples), "max_growth_mib": a.max_growth_mib, "ranks": ranks, "ok": ok}
    with open(os.path.join(out, "soak.json"), "w") as f:
        json.dump(summary, f, indent=2)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for r in range(a.np):
            ax.plot([s[1] for s in samples], [s[2][r] for s in samples], label=f"rank {r}")
        ax.axvline(a.warmup_steps, color="grey", ls=":", label="end of warm-up")
        ax.set_xlabel("step")
        ax.set_ylabel("RSS (MiB)")
        ax.set_title(f"soak: tiny preset, {a.np} ranks, {a.steps} steps")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "soak.png"), dpi=110)
    except ImportError:
        print("soak: no matplotlib; skipped soak.png")
    print(f"soak: {a.steps} steps in {wall:.0f} s, {len(samples)} samples; memory "
          f"{'flat after warm-up' if ok else 'GREW after warm-up'}; {out}/soak.json")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
