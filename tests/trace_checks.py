#!/usr/bin/env python3
"""Checks on `--trace` and `bench train --json` output used by tests/bench.cmake.

  trace_checks.py trace FILE RANKS STEPS      a Chrome trace with one process per rank (0..RANKS-1), each with
                                              train.step spans for exactly the steps STEPS (e.g. 1,2,3) and the
                                              MoE phase spans inside them
  trace_checks.py train-json FILE RANKS       a `bench train --json` document with every phase and ratio
Prints one line with what it found and exits 1 when the check fails.
"""
import json
import sys

MOE = {"moe.route", "moe.permute", "moe.exchange", "moe.experts", "moe.combine", "moe.exchange.bwd"}


def check_trace(path, ranks, steps):
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    ok = True
    for rank in range(ranks):
        mine = [e for e in events if e["pid"] == rank and e["ph"] == "X"]
        seen = sorted({e["args"]["step"] for e in mine if e["name"] == "train.step"})
        names = {e["name"] for e in mine}
        missing = MOE - names
        print(f"rank {rank}: {len(mine)} spans, train.step for steps {seen}, missing MoE phases {sorted(missing)}")
        ok = ok and seen == steps and not missing
    return ok


def check_train_json(path, ranks):
    with open(path) as f:
        doc = json.load(f)
    r = doc["records"][0]
    phases = r["phase_us"]
    need = MOE | {"train.forward", "train.backward", "train.allreduce", "train.optimizer", "train.trust"}
    missing = sorted(p for p in need if not phases.get(p, 0) > 0)
    print(f"bench train: world {r['world']}, step {r['step_us']:.0f} us, exchange share "
          f"{r['exchange_share_ratio']:.3f}, overhead {r['exchange_overhead_ratio']:.2f}, phases missing {missing}")
    return (doc["benchmark"] == "train" and r["world"] == ranks and not missing and r["step_us"] > 0
            and 0 < r["exchange_share_ratio"] < 1 and r["exchange_overhead_ratio"] > 0)


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "trace":
        ok = check_trace(sys.argv[2], int(sys.argv[3]), [int(s) for s in sys.argv[4].split(",")])
    elif len(sys.argv) == 4 and sys.argv[1] == "train-json":
        ok = check_train_json(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(__doc__)
    print("trace-checks-passed" if ok else "trace-checks-FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
