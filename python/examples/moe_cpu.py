#!/usr/bin/env python3
"""One MoE layer per rank process on the cpu backend, with numpy experts (a matmul per local
expert over recv_x), checked bit for bit against epd.reference.

    python3 moe_cpu.py --address unix:///run/epd/epd.sock --ranks 2
    python3 moe_cpu.py --daemon build/bin/epd --ranks 2     # starts a private cpu daemon

Every rank regenerates every rank's inputs from the seed, so each can compute the expected
output of the whole layer on its own.
"""

import sys

import _common  # noqa: F401 - puts the package on sys.path

import numpy as np

import epd
from epd import reference


def inputs(rank, iteration, args):
    rng = np.random.default_rng(1000 * iteration + rank)
    n = args.tokens - (iteration + rank) % 3  # token counts differ per rank and iteration
    x = rng.standard_normal((n, args.hidden)).astype(np.float32)
    idx = rng.integers(-1, args.experts, size=(n, args.topk)).astype(np.int64)
    w = rng.random((n, args.topk)).astype(np.float32)
    return x, idx, w


def expert_weights(args):
    rng = np.random.default_rng(7)
    return rng.standard_normal((args.experts, args.hidden, args.hidden)).astype(np.float32) / 8


def expert_forward(recv_x, counts, offsets, weights, first_expert):
    """The experts of this rank, in place: rows of expert l <- rows @ W[first_expert + l]."""
    for l, (count, offset) in enumerate(zip(counts, offsets)):
        rows = recv_x[offset:offset + count]
        rows[...] = np.ascontiguousarray(rows) @ weights[first_expert + l]


def rank_main(rank, args):
    client = epd.Client(args.address)
    session = client.open_session(rank, f"moe_cpu rank {rank}")
    # Every rank asks for the same group: the first creates it, the others find it.
    session.create_group(args.group, world_size=args.ranks, experts=args.experts,
                         hidden=args.hidden, max_tokens_per_rank=args.tokens, top_k=args.topk,
                         dtype="fp32")
    buf = epd.Buffer(session, session.create_handle(args.group))
    cfg = reference.Config.of(buf.handle)
    L = cfg.local_experts
    weights = expert_weights(args)
    for iteration in range(args.iterations):
        x, idx, w = inputs(rank, iteration, args)
        recv = buf.dispatch(x, idx, w)
        expert_forward(recv.recv_x, recv.recv_counts, recv.recv_offsets, weights, rank * L)
        out = buf.combine()

        everyone = [inputs(r, iteration, args) for r in range(args.ranks)]
        xs, idxs, ws = zip(*everyone)
        zs = []
        for d in range(args.ranks):
            packed = reference.dispatch(cfg, xs, idxs, ws, d)
            z = packed["recv_x"].copy()
            expert_forward(z, packed["recv_counts"], packed["recv_offsets"], weights, d * L)
            zs.append(z)
        want = reference.combine(cfg, rank, idxs, ws, zs)
        if not np.array_equal(out, want):
            print(f"rank {rank} iteration {iteration}: out differs, max |diff| "
                  f"{np.abs(out - want).max()}", file=sys.stderr)
            sys.exit(1)
    print(f"rank {rank}: {args.iterations} iterations bit-exact")
    buf.close()
    session.close()
    client.close()


def main():
    args = _common.example_parser(__doc__, "cpu", ranks=2, experts=8, hidden=64, tokens=16,
                                  topk=2, iterations=3, group="moe_cpu").parse_args()
    return _common.run_example(rank_main, args, "cpu")


if __name__ == "__main__":
    sys.exit(main())
