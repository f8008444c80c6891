#!/usr/bin/env python3
"""Peer for `trustep bench layer`: a plain PyTorch expert-parallel MoE layer over
torch.distributed (gloo), same shapes, same timing rules (median over iterations of the slowest
rank). Runs under the same mpirun as trustep:

    mpirun -np 2 .venv/bin/python bench/peers/moe_peer.py --tokens 16,256,4096 --backward

Rank/world come from OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE (else RANK/WORLD_SIZE, else a
single process); MASTER_ADDR defaults to 127.0.0.1, MASTER_PORT to 29531. Rank 0 prints one JSON
line per T (fwd_us, fwd_bwd_us, tokens_per_s, ...).

The layer: linear router → softmax → top-k → renormalise; slots sorted by expert; per-expert
counts exchanged with all_to_all_single; rows exchanged with all_to_all_single and split sizes;
per local expert SwiGLU (down(silu(gate x) * up x)) on contiguous segments; reverse exchange;
gate-weighted combine (fp32). The exchanges are autograd functions (backward = reverse exchange).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    return p.parse_args()


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class AllToAll(torch.autograd.Function):
    """Rows [N, H] with send splits → rows [sum(recv), H]; backward sends the gradient back."""

    @staticmethod
    def forward(ctx, x, send, recv):
        ctx.send, ctx.recv = send, recv
        out = x.new_empty((sum(recv), x.shape[1]))
        dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv, input_split_sizes=send)
        return out

    @staticmethod
    def backward(ctx, g):
        out = g.new_empty((sum(ctx.send), g.shape[1]))
        dist.all_to_all_single(out, g.contiguous(), output_split_sizes=ctx.send, input_split_sizes=ctx.recv)
        return out, None, None


class PeerMoE(torch.nn.Module):
    def __init__(self, hidden, ffn, experts, top_k, dtype, comm_dtype, rank, world, seed):
        super().__init__()
        assert experts % world == 0, "--experts must be a multiple of the world size"
        self.E, self.k, self.W, self.rank = experts, top_k, world, rank
        self.local = experts // world
        self.dtype, self.comm_dtype = dtype, comm_dtype
        g = torch.Generator().manual_seed(seed * 7919)
        self.router = torch.nn.Parameter((torch.rand(experts, hidden, generator=g) * 2 - 1) / hidden**0.5)
        gate, up, down = [], [], []
        for e in range(rank * self.local, (rank + 1) * self.local):
            ge = torch.Generator().manual_seed(seed * 1000003 + e)
            gate.append((torch.rand(ffn, hidden, generator=ge) * 2 - 1) / hidden**0.5)
            up.append((torch.rand(ffn, hidden, generator=ge) * 2 - 1) / hidden**0.5)
            down.append((torch.rand(hidden, ffn, generator=ge) * 2 - 1) / ffn**0.5)
        self.gate = torch.nn.Parameter(torch.stack(gate).to(dtype))
        self.up = torch.nn.Parameter(torch.stack(up).to(dtype))
        self.down = torch.nn.Parameter(torch.stack(down).to(dtype))

    def forward(self, x):
        T, H = x.shape
        probs = torch.softmax(x.float() @ self.router.t(), dim=-1)          # [T, E]
        top_p, top_e = probs.topk(self.k, dim=-1)                           # [T, k]
        weights = top_p / top_p.sum(-1, keepdim=True)
        flat_e = top_e.reshape(-1)
        order = torch.argsort(flat_e, stable=True)                          # slots by expert
        per_expert = torch.bincount(flat_e, minlength=self.E)               # [E]
        # counts: rank r gets [W, local] (per source, per local expert)
        recv_pe = torch.empty_like(per_expert)
        dist.all_to_all_single(recv_pe, per_expert)
        send = per_expert.view(self.W, self.local).sum(1).tolist()
        recv_mat = recv_pe.view(self.W, self.local)
        recv = recv_mat.sum(1).tolist()
        rows = x.index_select(0, order // self.k).to(self.comm_dtype)
        got = AllToAll.apply(rows, send, recv).to(self.dtype)               # source-major
        # regroup expert-major: for each local expert, rows from every source
        starts = torch.cumsum(recv_mat.reshape(-1), 0) - recv_mat.reshape(-1)
        idx, local_counts = [], []
        for i in range(self.local):
            n = 0
            for r in range(self.W):
                c = int(recv_mat[r, i])
                s = int(starts[r * self.local + i])
                idx.append(torch.arange(s, s + c))
                n += c
            local_counts.append(n)
        regroup = torch.cat(idx) if idx else torch.empty(0, dtype=torch.long)
        xin = got.index_select(0, regroup)
        outs, off = [], 0
        for i, n in enumerate(local_counts):
            seg = xin[off:off + n]
            outs.append((F.silu(seg @ self.gate[i].t()) * (seg @ self.up[i].t())) @ self.down[i].t())
            off += n
        y = torch.cat(outs) if outs else xin
        source_major = torch.zeros_like(y).index_copy(0, regroup, y)
        back = AllToAll.apply(source_major.to(self.comm_dtype), recv, send).float()
        contrib = back * weights.reshape(-1).index_select(0, order).unsqueeze(1)
        out = torch.zeros(T, H, dtype=torch.float32).index_add(0, order // self.k, contrib)
        return out.to(x.dtype)


def main():
    a = parse_args()
    env = os.environ
    rank = int(env.get("OMPI_COMM_WORLD_RANK", env.get("RANK", "0")))
    world = int(env.get("OMPI_COMM_WORLD_SIZE", env.get("WORLD_SIZE", "1")))
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", "29531")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    dtype = DTYPES[a.dtype]
    comm_dtype = DTYPES[a.comm_dtype or a.dtype]
    torch.manual_seed(a.seed)
    layer = PeerMoE(a.hidden, a.ffn, a.experts, a.top_k, dtype, comm_dtype, rank, world, a.seed)

    def timed(fn):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e6

    for T in [int(t) for t in a.tokens.split(",")]:
        g = torch.Generator().manual_seed(a.seed * 1000003 + rank)
        x = torch.randn(T, a.hidden, generator=g).to(dtype)

        def fwd():
            with torch.no_grad():
                layer(x)

        def fwd_bwd():
            layer.zero_grad(set_to_none=True)
            xi = x.detach().requires_grad_(True)
            layer(xi).sum().backward()

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
        if rank == 0:
            print(json.dumps({"peer": "torch.distributed-gloo", "torch": torch.__version__, "tokens": T,
                              "hidden": a.hidden, "ffn": a.ffn, "experts": a.experts, "top_k": a.top_k,
                              "dtype": a.dtype, "comm_dtype": a.comm_dtype or a.dtype, "world": world,
                              "fwd_us": fwd_us, "fwd_bwd_us": fwd_bwd_us,
                              "tokens_per_s": T / (layer_us * 1e-6)}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
