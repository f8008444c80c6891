#!/usr/bin/env python3
"""DeepSpeed-MoE peer for `trustep bench layer`: deepspeed.moe.layer.MoE, expert-parallel over
torch.distributed (gloo) on CPU ranks, same shapes, same timing rules and output as moe_peer.py
(peer_bench.py). Install DeepSpeed first (bench/peers/setup_peers.sh), then, under mpirun:

    mpirun -np 2 .venv/bin/python bench/peers/deepspeed_peer.py --tokens 16,256,4096 --backward

The layer: ep_size = world, one SwiGLU expert module (down(silu(gate x) * up x), no biases, the
same F as trustep's experts) per local expert, top-k gate with the noise off (no RTS, no Gumbel
sampling of the second expert), weights drawn exactly like moe_peer.py's. By default it is
dropless (drop_tokens=False): DeepSpeed then pads every expert's buffer to the largest per-expert
count over all ranks (one all_reduce MAX per forward) and exchanges the fixed [E, C, H] buffer
with equal splits. --capacity-factor F > 0 gives DeepSpeed's dropping mode instead (capacity
ceil(F·k·T/E) per expert and source rank, overflow dropped). Each JSON line adds `capacity` (C),
`padded_over_routed` (W·E·C / Σ T·k: expert rows computed and sent per row routed, all ranks)
and `dropped_fraction`.

--check runs no timing: for each T it compares the output and the input gradient with
moe_peer.py's layer on the same weights and inputs and exits 1 if they differ beyond rounding.
--save-weights FILE.safetensors writes the layer's weights (all experts, fp32) in the Hugging Face
layout `trustep bench layer --weights` reads; --input X.npy --dump-output Y.npy runs that global
batch once like `trustep bench layer --dump-output` (rank r takes rows [N·r/W, N·(r+1)/W), rank 0
writes the whole fp32 output), so the two can be compared on the same weights and inputs.
"""
import contextlib
import json
import os
import struct
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported: no GPU probing

import torch
import torch.distributed as dist
import torch.nn.functional as F

import peer_bench

try:
    import deepspeed
    from deepspeed.moe.layer import MoE
except ImportError as e:
    sys.exit(f"deepspeed_peer.py: cannot import deepspeed ({e}); run bench/peers/setup_peers.sh")


class SwiGLU(torch.nn.Module):
    def __init__(self, hidden, ffn):
        super().__init__()
        self.gate = torch.nn.Linear(hidden, ffn, bias=False)
        self.up = torch.nn.Linear(hidden, ffn, bias=False)
        self.down = torch.nn.Linear(ffn, hidden, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class DeepSpeedPeer(torch.nn.Module):
    """deepspeed MoE with moe_peer.py's weights; the router stays fp32 (DeepSpeed computes the
    gate in fp32 anyway), the experts are in --dtype. forward(x) returns the output only."""

    def __init__(self, a, rank, world):
        super().__init__()
        dropless = a.capacity_factor <= 0
        # DeepSpeed prints its group creation to stdout: keep stdout for the JSON lines.
        with contextlib.redirect_stdout(sys.stderr):
            self.moe = MoE(hidden_size=a.hidden, expert=SwiGLU(a.hidden, a.ffn), num_experts=a.experts,
                           ep_size=world, k=a.top_k,
                           capacity_factor=1.0 if dropless else a.capacity_factor,
                           eval_capacity_factor=1.0 if dropless else a.capacity_factor,
                           min_capacity=0, noisy_gate_policy=None, drop_tokens=not dropless,
                           use_rts=False, top2_2nd_expert_sampling=False)
            self.moe.set_deepspeed_parallelism()
        local = a.experts // world
        router, gate, up, down = peer_bench.init_weights(
            a.hidden, a.ffn, a.experts, range(rank * local, (rank + 1) * local), a.seed)
        dtype = peer_bench.DTYPES[a.dtype]
        with torch.no_grad():
            self.moe.deepspeed_moe.gate.wg.weight.copy_(router)
            for i, ex in enumerate(self.moe.deepspeed_moe.experts.deepspeed_experts):
                ex.gate.weight.copy_(gate[i])
                ex.up.weight.copy_(up[i])
                ex.down.weight.copy_(down[i])
                ex.to(dtype)
        self.routing = {}
        self.moe.deepspeed_moe.gate.register_forward_hook(self._seen)

    def _seen(self, _module, _inputs, out):
        # the gate's sparse-route output: (l_aux, capacity, E, indices [k, T] (-1 = dropped), ...)
        indices = out[3]
        self.routing = {"capacity": int(out[1]), "routed": indices.numel(), "kept": int((indices >= 0).sum())}

    def forward(self, x):
        return self.moe(x)[0]


def routing_record(layer, a, world):
    """Capacity, padding and drops of the last forward at this T, summed over the ranks."""
    r = layer.routing
    t = torch.tensor([r["routed"], r["kept"]], dtype=torch.float64)
    dist.all_reduce(t)
    padded = a.experts * r["capacity"] * world   # rows every rank's experts compute, all ranks
    return {"capacity": r["capacity"], "padded_over_routed": padded / float(t[0]),
            "dropped_fraction": 1.0 - float(t[1] / t[0])}


def check(a, rank, world, layer):
    import moe_peer

    dtype = peer_bench.DTYPES[a.dtype]
    plain = moe_peer.PeerMoE(a.hidden, a.ffn, a.experts, a.top_k, dtype, dtype, rank, world, a.seed)
    tol = 1e-4 if a.dtype == "fp32" else 3e-2
    ok = True
    for T in [int(t) for t in a.tokens.split(",")]:
        x = peer_bench.inputs(a, T, rank)
        outs = []
        for m in (layer, plain):
            xi = x.detach().requires_grad_(True)
            y = m(xi)
            y.float().square().sum().backward()   # a gradient that depends on y, not only on routing
            outs.append((y.detach().float(), xi.grad.float()))
        # relative to the largest magnitude, worst rank
        err = torch.tensor([float((outs[0][j] - outs[1][j]).abs().max() / outs[1][j].abs().max().clamp_min(1e-30))
                            for j in range(2)], dtype=torch.float64)
        dist.all_reduce(err, op=dist.ReduceOp.MAX)
        good = bool((err <= tol).all())
        ok = ok and good
        if rank == 0:
            print(json.dumps({"check": "deepspeed vs moe_peer", "tokens": T, "dtype": a.dtype, "world": world,
                              "out_rel_err": float(err[0]), "grad_rel_err": float(err[1]), "tol": tol,
                              "ok": good}), flush=True)
    return ok


def save_weights(a, path, prefix="model.layers.0.mlp."):
    """safetensors (8-byte little-endian header size, JSON header, raw little-endian bytes)."""
    router, gate, up, down = peer_bench.init_weights(a.hidden, a.ffn, a.experts, range(a.experts), a.seed)
    named = {prefix + "gate.weight": router}
    for e in range(a.experts):
        for kind, w in (("gate", gate), ("up", up), ("down", down)):
            named[f"{prefix}experts.{e}.{kind}_proj.weight"] = w[e]
    header, blobs, offset = {}, [], 0
    for name, t in named.items():
        b = t.contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def dump_output(a, rank, world, layer):
    import numpy as np

    x = torch.from_numpy(np.load(a.input)).float()
    if x.dim() != 2 or x.shape[1] != a.hidden:
        raise SystemExit(f"deepspeed_peer.py: --input {a.input}: expected [N, {a.hidden}] (--hidden), got {list(x.shape)}")
    N = x.shape[0]
    begin, end = N * rank // world, N * (rank + 1) // world
    with torch.no_grad():
        mine = layer(x[begin:end].to(peer_bench.DTYPES[a.dtype])).float()
    largest = -(-N // world)
    padded = torch.zeros(largest, a.hidden)
    padded[:end - begin] = mine
    blocks = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(blocks, padded)
    if rank == 0:
        out = torch.cat([blocks[p][:N * (p + 1) // world - N * p // world] for p in range(world)])
        np.save(a.dump_output, out.numpy())
        print(f"deepspeed_peer.py: wrote {a.dump_output} [{N}, {a.hidden}] from {world} ranks", file=sys.stderr)


def main():
    p = peer_bench.parser(__doc__.split("\n")[0])
    p.add_argument("--capacity-factor", type=float, default=0.0,
                   help="0: dropless (drop_tokens=False, default); F > 0: DeepSpeed's capacity ceil(F·k·T/E), drops")
    p.add_argument("--check", action="store_true", help="compare with moe_peer.py's layer instead of timing")
    p.add_argument("--save-weights", metavar="FILE", help="write the weights as safetensors (rank 0) for trustep --weights")
    p.add_argument("--input", metavar="X.npy", help="dump mode: global batch [N, H], split over the ranks")
    p.add_argument("--dump-output", metavar="Y.npy", help="dump mode: write the whole output [N, H] (fp32, rank 0)")
    a = p.parse_args()
    if bool(a.input) != bool(a.dump_output):
        p.error("--input and --dump-output go together")
    if (a.comm_dtype or a.dtype) != a.dtype:
        p.error(f"--comm-dtype {a.comm_dtype}: DeepSpeed's MoE layer exchanges rows in the hidden dtype "
                f"(--dtype {a.dtype}); it has no separate wire dtype")
    rank, world = peer_bench.init_gloo(a)
    if a.experts % world:
        p.error(f"--experts {a.experts} must be a multiple of the world size {world}")
    with contextlib.redirect_stdout(sys.stderr):
        deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
    torch.manual_seed(a.seed)
    layer = DeepSpeedPeer(a, rank, world)
    if a.save_weights and rank == 0:
        save_weights(a, a.save_weights)
    if a.dump_output:
        dump_output(a, rank, world, layer)
        dist.destroy_process_group()
        return 0
    if a.check:
        ok = check(a, rank, world, layer)
        dist.destroy_process_group()
        return 0 if ok else 1

    record = {"peer": f"deepspeed-{deepspeed.__version__}-moe-gloo", "capacity_factor": a.capacity_factor}
    peer_bench.run(a, rank, world, layer, layer, record, lambda: routing_record(layer, a, world))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
