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
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

import peer_bench


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
        router, gate, up, down = peer_bench.init_weights(
            hidden, ffn, experts, range(rank * self.local, (rank + 1) * self.local), seed)
        self.router = torch.nn.Parameter(router)
        self.gate = torch.nn.Parameter(gate.to(dtype))
        self.up = torch.nn.Parameter(up.to(dtype))
        self.down = torch.nn.Parameter(down.to(dtype))

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
    a = peer_bench.parser(__doc__.split("\n")[0]).parse_args()
    rank, world = peer_bench.init_gloo(a)
    dtype = peer_bench.DTYPES[a.dtype]
    comm_dtype = peer_bench.DTYPES[a.comm_dtype or a.dtype]
    torch.manual_seed(a.seed)
    layer = PeerMoE(a.hidden, a.ffn, a.experts, a.top_k, dtype, comm_dtype, rank, world, a.seed)
    peer_bench.run(a, rank, world, layer, layer, {"peer": "torch.distributed-gloo"})
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
