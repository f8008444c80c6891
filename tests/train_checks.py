#!/usr/bin/env python3
"""Checks on `trustep train` output used by the ctest entries in tests/train.cmake.

  train_checks.py loss-drop METRICS MIN_FRACTION     first-5-step mean vs last-10-step mean of lm_loss
  train_checks.py same-steps METRICS_A METRICS_B     every step record equal except wall-clock fields
  train_checks.py poison METRICS                     poisoned experts end with less trust and traffic
                                                     than the mean of the others (blend/trust-first)
Prints one line with the numbers and exits 1 when the check fails.
"""
import json
import sys

TIMING = {"tokens_per_s", "elapsed_s"}


def records(path, kind):
    with open(path) as f:
        return [r for r in (json.loads(line) for line in f if line.strip()) if r.get("type") == kind]


def loss_drop(path, minimum):
    steps = records(path, "step")
    first = sum(r["lm_loss"] for r in steps[:5]) / len(steps[:5])
    last = sum(r["lm_loss"] for r in steps[-10:]) / len(steps[-10:])
    drop = 1 - last / first
    print(f"lm_loss first {first:.4f} last {last:.4f} drop {drop:.1%} (need {minimum:.0%}) over {len(steps)} steps")
    return drop >= minimum


def same_steps(a, b):
    ra, rb = records(a, "step"), records(b, "step")
    if len(ra) != len(rb):
        print(f"different step counts: {len(ra)} vs {len(rb)}")
        return False
    for x, y in zip(ra, rb):
        x = {k: v for k, v in x.items() if k not in TIMING}
        y = {k: v for k, v in y.items() if k not in TIMING}
        if x != y:
            diff = [k for k in x if x.get(k) != y.get(k)]
            print(f"step {x['step']} differs in {diff}: {[x[k] for k in diff]} vs {[y.get(k) for k in diff]}")
            return False
    print(f"{len(ra)} step records identical (loss {ra[-1]['loss']!r})")
    return True


def poison(path):
    final = records(path, "final")[-1]
    poisoned = set(final["poison_experts"])
    trust = final["trust"]  # [C][E] of one layer
    experts = len(trust[0])
    mean_trust = [sum(row[e] for row in trust) / len(trust) for e in range(experts)]
    steps = records(path, "step")
    last = steps[-10:]
    share = [sum(sum(r["load"][l][e] for l in range(len(r["load"]))) / len(r["load"]) for r in last) / len(last)
             for e in range(experts)]
    others = [e for e in range(experts) if e not in poisoned]
    ok = True
    for e in sorted(poisoned):
        t_other = sum(mean_trust[o] for o in others) / len(others)
        s_other = sum(share[o] for o in others) / len(others)
        print(f"expert {e}: trust {mean_trust[e]:.3f} (others {t_other:.3f}), "
              f"traffic share {share[e]:.4f} (others {s_other:.4f}, uniform {1 / experts:.4f})")
        ok = ok and mean_trust[e] < t_other and share[e] < s_other
    return ok


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 2
    cmd = argv[1]
    if cmd == "loss-drop":
        return 0 if loss_drop(argv[2], float(argv[3])) else 1
    if cmd == "same-steps":
        return 0 if same_steps(argv[2], argv[3]) else 1
    if cmd == "poison":
        return 0 if poison(argv[2]) else 1
    print(f"unknown check '{cmd}'")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
