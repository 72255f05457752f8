#!/usr/bin/env python3
"""One MoE layer per rank process on GPUs, through the epd daemon, with real torch experts (a
matmul per local expert over recv_x), checked bit for bit against a pure-torch reference.

    python moe_layer.py --address unix:///run/epd/epd.sock --ranks 2
    python moe_layer.py --daemon <bundle>/bin/epd --ranks 1      # private cuda daemon
    python3 moe_layer.py --cpu --daemon build/bin/epd --ranks 2  # torch CPU, cpu backend

Rank r drives GPU r (the daemon's node rank r). Each rank regenerates every rank's tokens from
the seed, so it can compute the whole layer's expected output alone: for each expert the
reference packs the same rows in the same order as the daemon (source rank, token, k) and runs
the same GEMM on them, then combines with fp32 accumulation acc = acc + w * z.
"""

import sys
import time

import _common  # noqa: F401 - puts the package on sys.path


def tokens(rank, iteration, args, torch, device):
    g = torch.Generator().manual_seed(1000 * iteration + rank)
    n = args.tokens - (iteration + rank) % 5  # token counts change per rank and iteration
    x = torch.randn(n, args.hidden, generator=g).to(torch.bfloat16)
    idx = torch.randint(-1, args.experts, (n, args.topk), generator=g, dtype=torch.int64)
    w = torch.rand(n, args.topk, generator=g)
    return x.to(device), idx.to(device), w.to(device)


def expert_weights(args, torch, device):
    g = torch.Generator().manual_seed(7)
    scale = args.hidden ** -0.5
    return [(torch.randn(args.hidden, args.hidden, generator=g) * scale).to(device)
            for _ in range(args.experts)]


def expert(rows, weight):
    # NOTE: .float() makes a fresh contiguous input, so the layer and the reference run the
    # same GEMM on identically shaped and aligned operands.
    return (rows.float() @ weight).to(rows.dtype)


def reference(rank, everyone, weights, args, torch):
    """out of `rank` for the inputs of every rank (list of (x, idx, w))."""
    K, H = args.topk, args.hidden
    z_of = {}  # (s, t, k) -> expert output row
    for e in range(args.experts):
        picks = []
        for s, (x, idx, _) in enumerate(everyone):
            flat = idx.reshape(-1)
            for p in (flat == e).nonzero().flatten().tolist():
                picks.append((s, p // K, p % K))
        if not picks:
            continue
        rows = torch.stack([everyone[s][0][t] for s, t, _ in picks])
        z = expert(rows, weights[e])
        for i, key in enumerate(picks):
            z_of[key] = z[i]
    x, idx, w = everyone[rank]
    acc = torch.zeros(x.shape[0], H, dtype=torch.float32, device=x.device)
    for t in range(x.shape[0]):
        for k in range(K):
            if (rank, t, k) in z_of:
                acc[t] = acc[t] + w[t, k] * z_of[(rank, t, k)].float()
    return acc.to(x.dtype)


def layer(buf, x, idx, w, weights, first_expert):
    """dispatch -> experts in place on recv_x -> combine (fenced on the current stream)."""
    recv = buf.dispatch(x, idx, w)
    counts = recv.recv_counts.tolist()  # a host sync; grouped GEMMs would read them on device
    offsets = recv.recv_offsets.tolist()
    for l, (count, offset) in enumerate(zip(counts, offsets)):
        if count:
            rows = recv.recv_x[offset:offset + count]
            rows.copy_(expert(rows, weights[first_expert + l]))
    return buf.combine()


def rank_main(rank, args):
    import torch
    import epd
    if args.cpu:
        device = torch.device("cpu")
    else:
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    client = epd.Client(args.address)
    session = client.open_session(rank, f"moe_layer rank {rank}")
    session.create_group(args.group, world_size=args.ranks, experts=args.experts,
                         hidden=args.hidden, max_tokens_per_rank=args.tokens, top_k=args.topk,
                         dtype="bf16")
    buf = epd.Buffer(session, session.create_handle(args.group, data_path=args.data_path))
    L = args.experts // args.ranks
    weights = expert_weights(args, torch, device)
    failures = 0
    started = time.perf_counter()
    for iteration in range(args.iterations):
        x, idx, w = tokens(rank, iteration, args, torch, device)
        out = layer(buf, x, idx, w, weights, rank * L)
        everyone = [tokens(r, iteration, args, torch, device) for r in range(args.ranks)]
        want = reference(rank, everyone, weights, args, torch)
        if not torch.equal(out, want):
            diff = (out.float() - want.float()).abs().max().item()
            print(f"rank {rank} iteration {iteration}: out differs from the reference, "
                  f"max |diff| {diff}", file=sys.stderr)
            failures += 1
    if not args.cpu:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    print(f"rank {rank}: {args.iterations} layers, {'bit-exact' if not failures else 'FAILED'}, "
          f"{elapsed / max(args.iterations, 1) * 1e3:.2f} ms per layer incl. the reference")
    buf.close()
    session.close()
    client.close()
    sys.exit(1 if failures else 0)


def main():
    parser = _common.example_parser(__doc__, "cuda", ranks=1, experts=16, hidden=512, tokens=32,
                                    topk=4, iterations=5, group="moe_layer")
    parser.add_argument("--data-path", default="default", choices=["default", "daemon", "frontend"],
                        help="who launches the kernels (README, data path)")
    parser.add_argument("--cpu", action="store_true",
                        help="torch CPU tensors on the cpu backend (no GPU needed)")
    args = parser.parse_args()
    return _common.run_example(rank_main, args, "cpu" if args.cpu else "cuda")


if __name__ == "__main__":
    sys.exit(main())
