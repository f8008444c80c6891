#!/usr/bin/env python3
"""The seed prototype's expert selection, as it actually ran: baseline of `trustep bench select`.

Reimplements the path of the prototype's TrustBasedExpertSelector.select_experts (see
../shared/seeds/: "tensor -> numpy -> list -> tensor", one call per token) on ONE token at a
time, in plain numpy/torch, the way that code did it:

    router logits row (torch tensor) -> .detach().cpu().numpy().astype(np.float32)
    -> softmax in numpy -> trust of the token's context from a numpy table
    -> combined = alpha * p + (1 - alpha) * trust            (numpy)
    -> np.argsort(combined)[-k:][::-1]                       (top-k, descending)
    -> weights = p[top] / p[top].sum() -> .tolist()
    -> torch.tensor(weights_list, dtype=torch.float32)

and a Python loop over tokens. Differences from the seed, all in the prototype's favour (it is a
lower bound on the seed's cost): the trust row is one numpy table lookup (the seed queried a
reputation database per expert), there is no expert-cache/substitution bookkeeping, and the
softmax is applied to the logits (the seed blended raw logits with [0, 1] trust, which trustep
fixes; the selection code path is the same). Mode `router` is the same path with alpha = 1.
Mode `trust-first` did not exist in the seed: it is written in the same style (per-token numpy
choice between the trust row and p, exploration drawn per token with probability epsilon).

Inputs are .npy files written by the C++ benchmark (bench/select_bench.cpp):
  logits.npy [T, E] float32, trust_table.npy [C, E] float32, context.npy [T] int64,
  trusted.npy [T] bool.
Prints one JSON line: {"tokens": n, "seconds": s} (median over --iters loops of n tokens).
With --write-selections, writes experts.npy [n, k] int64 and weights.npy [n, k] float32.
`--probe` only imports numpy and torch and prints their versions.
"""

import argparse
import json
import os
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe", action="store_true", help="import numpy and torch, print versions, exit")
    ap.add_argument("--dir", help="directory with the input .npy files (and the outputs)")
    ap.add_argument("--mode", choices=["router", "blend", "trust-first"], default="blend")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--epsilon", type=float, default=0.0)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=0, help="tokens to select (0: all)")
    ap.add_argument("--iters", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="where the logits tensor lives (cpu, cuda)")
    ap.add_argument("--write-selections", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch

    if args.probe:
        print(json.dumps({"python": sys.version.split()[0], "numpy": np.__version__, "torch": torch.__version__}))
        return 0

    logits_np = np.load(os.path.join(args.dir, "logits.npy"))
    trust_table = np.load(os.path.join(args.dir, "trust_table.npy"))
    context = np.load(os.path.join(args.dir, "context.npy"))
    trusted = np.load(os.path.join(args.dir, "trusted.npy"))
    n = logits_np.shape[0] if args.tokens <= 0 else min(args.tokens, logits_np.shape[0])
    # The tensor the MoE layer handed to the selector: router logits on the model's device.
    router_logits = torch.from_numpy(np.ascontiguousarray(logits_np[:n])).to(args.device)
    k = args.top_k
    alpha = 1.0 if args.mode == "router" else args.alpha

    def select_experts(token_logits, ctx, is_trusted, rng):
        # Convert router logits to numpy for easier manipulation (ensure float32)
        router_scores = token_logits.detach().cpu().numpy().astype(np.float32)
        z = np.exp(router_scores - router_scores.max())
        probs = z / z.sum()
        trust_scores = trust_table[ctx]  # contextual trust of every expert
        if args.mode == "trust-first":
            by_trust = bool(is_trusted) and not (rng.random() < args.epsilon)
            combined_scores = trust_scores if by_trust else probs
        else:
            combined_scores = alpha * probs + (1 - alpha) * trust_scores
        top_k_indices = np.argsort(combined_scores)[-k:][::-1]  # Descending order
        selected_probs = probs[top_k_indices]
        return (
            [int(e) for e in top_k_indices],
            combined_scores[top_k_indices].tolist(),
            (selected_probs / selected_probs.sum()).tolist(),
        )

    def run_loop():
        rng = np.random.default_rng(args.seed)
        experts, weights = [], []
        for t in range(n):
            ids, _scores, weights_list = select_experts(router_logits[t], int(context[t]), trusted[t], rng)
            experts.append(ids)
            weights.append(torch.tensor(weights_list, dtype=torch.float32))
        return experts, weights

    for _ in range(args.warmup):
        run_loop()
    seconds = []
    for _ in range(max(1, args.iters)):
        t0 = time.perf_counter()
        experts, weights = run_loop()
        seconds.append(time.perf_counter() - t0)

    if args.write_selections:
        np.save(os.path.join(args.dir, "experts.npy"), np.asarray(experts, dtype=np.int64).reshape(n, k))
        w = torch.stack(weights).numpy() if n else np.zeros((0, k), dtype=np.float32)
        np.save(os.path.join(args.dir, "weights.npy"), w.astype(np.float32).reshape(n, k))
    print(json.dumps({"tokens": n, "seconds": statistics.median(seconds)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
