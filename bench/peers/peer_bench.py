"""What the Python peers of `trustep bench layer` share: the command line, the gloo start-up under
mpirun, the inputs and the timing rules (barrier before each timed step, steps of one iteration in
rotating order, slowest rank by all_reduce MAX, median over --iters after --warmup), and the
one-JSON-line-per-T output on rank 0. A peer supplies only its layer.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--tokens", default="16,256,4096")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--ffn", type=int, default=1024)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--comm-dtype", default=None, choices=["fp32", "bf16", "fp16"])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--backward", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after each T, profile one more layer step (fwd+bwd with --backward) and print the"
                        " N ops with the most self CPU time on rank 0 to stderr")
    return p


def init_gloo(a):
    """Rank/world from OMPI_COMM_WORLD_* (else RANK/WORLD_SIZE, else one process); gloo over
    MASTER_ADDR (default 127.0.0.1) and MASTER_PORT (default 29531). Returns (rank, world)."""
    env = os.environ
    rank = int(env.get("OMPI_COMM_WORLD_RANK", env.get("RANK", "0")))
    world = int(env.get("OMPI_COMM_WORLD_SIZE", env.get("WORLD_SIZE", "1")))
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", "29531")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    return rank, world


def init_weights(hidden, ffn, experts, local_experts, seed):
    """The peers' weights (trustep's distributions, not its bits): router [E, H] and, for the
    global experts `local_experts`, gate/up [F, H] and down [H, F], uniform(±1/sqrt(fan_in)), fp32."""
    g = torch.Generator().manual_seed(seed * 7919)
    router = (torch.rand(experts, hidden, generator=g) * 2 - 1) / hidden**0.5
    gate, up, down = [], [], []
    for e in local_experts:
        ge = torch.Generator().manual_seed(seed * 1000003 + e)
        gate.append((torch.rand(ffn, hidden, generator=ge) * 2 - 1) / hidden**0.5)
        up.append((torch.rand(ffn, hidden, generator=ge) * 2 - 1) / hidden**0.5)
        down.append((torch.rand(hidden, ffn, generator=ge) * 2 - 1) / ffn**0.5)
    return router, torch.stack(gate), torch.stack(up), torch.stack(down)


def inputs(a, T, rank):
    """randn [T, H] seeded by (seed, rank), in --dtype."""
    g = torch.Generator().manual_seed(a.seed * 1000003 + rank)
    return torch.randn(T, a.hidden, generator=g).to(DTYPES[a.dtype])


def profile(step, rows, rank, T):
    from torch.profiler import ProfilerActivity, profile as torch_profile

    dist.barrier()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    if rank == 0:
        print(f"profile T={T} (rank 0):", file=sys.stderr)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows), file=sys.stderr, flush=True)


def run(a, rank, world, module, forward, record, extra=None):
    """Times `forward(x)` (a [T, H] tensor out) for every T of --tokens; `module` owns the
    parameters; `record`, and what `extra()` returns after each T's timing (called on every
    rank, so it may use collectives), are merged into the JSON lines."""
    def timed(fn):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e6

    for T in [int(t) for t in a.tokens.split(",")]:
        x = inputs(a, T, rank)

        def fwd():
            with torch.no_grad():
                forward(x)

        def fwd_bwd():
            module.zero_grad(set_to_none=True)
            xi = x.detach().requires_grad_(True)
            forward(xi).sum().backward()

        steps = [fwd] + ([fwd_bwd] if a.backward else [])
        samples = [[] for _ in steps]
        for it in range(a.warmup + a.iters):
            t = torch.zeros(len(steps), dtype=torch.float64)
            for s in range(len(steps)):
                k = (s + it) % len(steps)
                t[k] = timed(steps[k])
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            if it >= a.warmup:
                for s in range(len(steps)):
                    samples[s].append(float(t[s]))
        fwd_us = statistics.median(samples[0])
        fwd_bwd_us = statistics.median(samples[1]) if a.backward else None
        layer_us = fwd_bwd_us if a.backward else fwd_us
        if a.profile:
            profile(steps[-1], a.profile, rank, T)
        more = extra() if extra else {}
        if rank == 0:
            print(json.dumps({**record, **more, "torch": torch.__version__, "tokens": T,
                              "hidden": a.hidden, "ffn": a.ffn, "experts": a.experts, "top_k": a.top_k,
                              "dtype": a.dtype, "comm_dtype": a.comm_dtype or a.dtype, "world": world,
                              "fwd_us": fwd_us, "fwd_bwd_us": fwd_bwd_us,
                              "tokens_per_s": T / (layer_us * 1e-6)}), flush=True)
