#!/usr/bin/env python3
"""Baseline for epd-bench: MoE dispatch/combine built on torch.distributed.all_to_all_single
with the NCCL backend, the way a user without epd writes it (one process per GPU).

Run under torchrun, after epd-bench wrote its JSON (epd-bench does this itself when given
--torch-python):

  python -m torch.distributed.run --standalone --nproc-per-node 4 torch_all_to_all.py \
      --merge-into results.json

It reads the cases from the `results` of that JSON (schema epd-bench/1), measures each with
identical routing (the integer hash of tests/bench/routing.h, re-implemented below) and sizes,
appends its own results (mode "torch_all_to_all") to the same file and prints a comparison
table. Semantics (expert-major layout, docs/design.md section 3):

  update:   the send order on the GPU: selections sorted by (expert, token, k) with a stable
            argsort, per-expert send counts (bincount), the inverse position of every (t, k).
  dispatch: all_to_all_single of the per-expert counts, .tolist() of the split sizes (a host
            sync), index_select of the token rows, all_to_all_single of the rows, and a stable
            argsort that reorders the rows received per source into (expert, source, token).
  combine:  the inverse permutation, all_to_all_single back, and
            out[t] = sum over k ascending of w[t, k] * row (fp32, separate mul and add), cast
            to the token dtype.

Times are CUDA events on the current stream around each op (median / p99 over iterations of
the slowest rank), as in epd-bench. Rank-major cases are skipped (no rank-major form here).
"""
import argparse
import datetime
import json
import os
import sys

import torch
import torch.distributed as dist

MASK = (1 << 64) - 1


def mix(x):
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def hash5(seed, rank, token, k, attempt):
    return mix(mix(mix(mix(seed) ^ rank) ^ token) ^ ((k << 20) | attempt))


def make_routing(case, rank):
    """topk_idx [n, K] and weights [n, K] exactly as epd::bench::MakeRouting."""
    n, K, E = case["tokens"], case["top_k"], case["experts"]
    seed, skewed = case["seed"], case["routing"] == "skewed"
    hot = max(1, min(case.get("hot_experts", 8), E))
    hot_percent = case.get("hot_percent", 50)
    distinct = min(K, E)
    idx = [[-1] * K for _ in range(n)]
    weights = [[0.0] * K for _ in range(n)]
    valid = 0
    for t in range(n):
        ids = idx[t]
        for k in range(distinct):
            attempt = 0
            while True:
                h = hash5(seed, rank, t, k, attempt)
                e = h % E
                if skewed and (h >> 32) % 100 < hot_percent:
                    e = h % hot
                if e not in ids[:k]:
                    ids[k] = e
                    break
                attempt += 1
            weights[t][k] = (hash5(seed, rank, t, k, 0xFFFFF) >> 40) / 16777216.0
            valid += 1
    return idx, weights, valid


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def token_values(case, rank, device):
    n, H = case["tokens"], case["hidden"]
    t = torch.arange(n, dtype=torch.int64, device=device).view(n, 1)
    h = torch.arange(H, dtype=torch.int64, device=device).view(1, H)
    v = (rank * 131 + t * 31 + h * 7) % 257 - 128
    return (v.to(torch.float32) / 64.0).to(DTYPES[case["dtype"]])


def summarize(per_rank, bytes_per_rank):
    iterations = min(len(r) for r in per_rank)
    if iterations == 0:
        return {"iterations": 0, "median_us": 0, "p99_us": 0, "mean_us": 0, "min_us": 0,
                "max_us": 0, "gbps": 0}
    slowest = sorted(max(r[i] for r in per_rank) for i in range(iterations))
    m = len(slowest)
    median = slowest[m // 2] if m % 2 else 0.5 * (slowest[m // 2 - 1] + slowest[m // 2])
    p99 = slowest[min(max(1, -(-99 * m // 100)), m) - 1]
    return {"iterations": m, "median_us": round(median, 3), "p99_us": round(p99, 3),
            "mean_us": round(sum(slowest) / m, 3), "min_us": round(slowest[0], 3),
            "max_us": round(slowest[-1], 3),
            "gbps": round(bytes_per_rank / (median * 1e3), 3) if median > 0 and bytes_per_rank else 0.0}


class Layer:
    """One rank's state of a case."""

    def __init__(self, case, rank, world, device):
        self.case, self.rank, self.world, self.device = case, rank, world, device
        self.E, self.K, self.n, self.H = case["experts"], case["top_k"], case["tokens"], case["hidden"]
        self.L = self.E // world
        idx, weights, self.valid = make_routing(case, rank)
        self.topk = torch.tensor(idx, dtype=torch.int64, device=device).view(self.n, self.K)
        self.weights = torch.tensor(weights, dtype=torch.float32, device=device).view(self.n, self.K)
        self.x = token_values(case, rank, device)
        self.out = None

    def update(self):
        flat = self.topk.reshape(-1)
        valid = flat >= 0
        key = torch.where(valid, flat, torch.full_like(flat, self.E))
        order = torch.argsort(key, stable=True)  # by expert, then (t, k)
        self.send_counts = torch.bincount(flat[valid], minlength=self.E).to(torch.int64)
        total = int(valid.sum().item())
        order = order[:total]
        self.send_token = order // self.K
        pos = torch.full((self.n * self.K,), -1, dtype=torch.int64, device=self.device)
        pos[order] = torch.arange(total, dtype=torch.int64, device=self.device)
        self.pos = pos.view(self.n, self.K)

    def dispatch(self):
        R, L = self.world, self.L
        recv_counts = torch.empty_like(self.send_counts)
        dist.all_to_all_single(recv_counts, self.send_counts)
        splits = torch.stack([self.send_counts.view(R, L).sum(1), recv_counts.view(R, L).sum(1)])
        splits = splits.cpu().tolist()  # host sync: NCCL needs the sizes on the host
        self.input_splits, self.output_splits = splits[0], splits[1]
        send = self.x.index_select(0, self.send_token)
        recv = torch.empty((sum(self.output_splits), self.H), dtype=self.x.dtype, device=self.device)
        dist.all_to_all_single(recv, send, self.output_splits, self.input_splits)
        # Received rows are ordered (source s, expert l, token); expert-major wants (l, s, token).
        segment = torch.repeat_interleave(
            torch.arange(R * L, device=self.device), recv_counts.view(-1), output_size=recv.shape[0])
        key = (segment % L) * R + segment // L
        self.perm = torch.argsort(key, stable=True)
        self.expert_rows = recv.index_select(0, self.perm)

    def combine(self):
        # Identity experts: the expert output is the dispatched rows.
        per_source = torch.empty_like(self.expert_rows)
        per_source[self.perm] = self.expert_rows
        back = torch.empty((sum(self.input_splits), self.H), dtype=self.x.dtype, device=self.device)
        dist.all_to_all_single(back, per_source, self.input_splits, self.output_splits)
        self.back = back
        acc = torch.zeros((self.n, self.H), dtype=torch.float32, device=self.device)
        for k in range(self.K):
            p = self.pos[:, k]
            ok = p >= 0
            rows = back.index_select(0, p.clamp(min=0)).to(torch.float32)
            w = torch.where(ok, self.weights[:, k], torch.zeros_like(self.weights[:, k]))
            acc = acc + w.view(-1, 1) * rows  # separate mul and add: two roundings, no FMA
        self.out = acc.to(self.x.dtype)

    def check(self):
        """Every returned row must be its token's row (the data path moved the right bytes)."""
        for k in range(self.K):
            p = self.pos[:, k]
            ok = p >= 0
            if ok.any():
                got = self.back.index_select(0, p[ok])
                if not torch.equal(got, self.x[ok]):
                    bad = int((got != self.x[ok]).any(1).nonzero()[0].item())
                    return f"failed: rank {self.rank} k {k}: returned row {bad} differs from its token"
        return "passed"


def time_case(case, rank, world, device, warmup, iterations, do_check):
    layer = Layer(case, rank, world, device)
    ops = {"update": layer.update, "dispatch": layer.dispatch, "combine": layer.combine}
    samples = {name: [] for name in ops}
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    check = "skipped"
    for it in range(warmup + iterations):
        for name, op in ops.items():
            torch.cuda.synchronize()
            dist.barrier()
            start.record()
            op()
            stop.record()
            stop.synchronize()
            if it >= warmup:
                samples[name].append(start.elapsed_time(stop) * 1e3)
        if it == 0 and do_check:
            check = layer.check()
    return samples, layer.valid, check


def nccl_version():
    v = torch.cuda.nccl.version()
    return ".".join(str(x) for x in v) if isinstance(v, tuple) else str(v)


def case_key(case):
    return json.dumps(case, sort_keys=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--merge-into", required=True, help="epd-bench JSON: cases in, results out")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--no-check", action="store_true")
    args = parser.parse_args()

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank)
    dist.init_process_group("nccl", device_id=device)
    rank, world = dist.get_rank(), dist.get_world_size()

    with open(args.merge_into) as f:
        doc = json.load(f)
    cases, seen = [], set()
    for result in doc["results"]:
        case = result["case"]
        if case["layout"] != "expert_major":
            continue  # the baseline has no rank-major form
        if case_key(case) not in seen:
            seen.add(case_key(case))
            cases.append(case)

    new_results = []
    for i, case in enumerate(cases):
        entry = {"case": case, "mode": "torch_all_to_all", "timing": "gpu_events",
                 "handle_bytes": 0, "selections_per_rank": 0, "ops": {}, "check": "skipped",
                 "error": None}
        if case["layout"] != "expert_major":
            entry["error"] = "the torch baseline implements the expert-major layout only"
        elif case["ranks"] != world:
            entry["error"] = f"case of {case['ranks']} ranks run with {world} processes"
        else:
            samples, valid, check = time_case(case, rank, world, device, args.warmup,
                                              args.iterations, not args.no_check)
            gathered = [None] * world
            dist.all_gather_object(gathered, (samples, valid, check))
            selections = sum(g[1] for g in gathered) / world
            entry["selections_per_rank"] = selections
            row_bytes = case["hidden"] * {"bf16": 2, "fp16": 2, "fp32": 4}[case["dtype"]]
            for op in ("update", "dispatch", "combine"):
                nbytes = 0 if op == "update" else selections * row_bytes
                entry["ops"][op] = summarize([g[0][op] for g in gathered], nbytes)
            checks = [g[2] for g in gathered if g[2] != "passed"]
            entry["check"] = checks[0] if checks else "passed"
        new_results.append(entry)
        if rank == 0:
            print(f"torch_all_to_all: [{i + 1}/{len(cases)}] {case['tokens']} tokens H{case['hidden']} "
                  f"{case['layout']} {case['routing']}: {entry['error'] or 'ok'}", file=sys.stderr)

    if rank == 0:
        doc["results"] = [r for r in doc["results"] if r["mode"] != "torch_all_to_all"] + new_results
        doc.setdefault("baselines", {})["torch"] = {
            "torch_version": torch.__version__,
            "nccl_version": nccl_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        with open(args.merge_into, "w") as f:
            json.dump(doc, f, indent=1)
        print_comparison(doc)
    dist.barrier()
    dist.destroy_process_group()


def print_comparison(doc):
    """Dispatch / combine medians of every mode per case, and epd's speed-up over torch."""
    by_case = {}
    for r in doc["results"]:
        by_case.setdefault(case_key(r["case"]), []).append(r)
    print("\n## dispatch / combine median us (GB/s) per mode; speed-up = torch / epd\n")
    print("| case | mode | dispatch | combine | dispatch speed-up | combine speed-up |")
    print("|---|---|---|---|---|---|")
    for results in by_case.values():
        c = results[0]["case"]
        label = (f"H{c['hidden']} K{c['top_k']} E{c['experts']} n{c['tokens']} {c['dtype']} "
                 f"{c['layout']} {c['routing']}")
        torch_r = next((r for r in results if r["mode"] == "torch_all_to_all" and not r["error"]), None)
        for r in results:
            if r["error"]:
                print(f"| {label} | {r['mode']} | error | {r['error'][:80]} | | |")
                continue
            cells, ups = [], []
            for op in ("dispatch", "combine"):
                s = r["ops"].get(op, {})
                cells.append(f"{s.get('median_us', 0):.1f} ({s.get('gbps', 0):.1f})")
                if torch_r and s.get("median_us"):
                    ups.append(f"{torch_r['ops'][op]['median_us'] / s['median_us']:.2f}x")
                else:
                    ups.append("-")
            print(f"| {label} | {r['mode']} | {cells[0]} | {cells[1]} | {ups[0]} | {ups[1]} |")


if __name__ == "__main__":
    main()
