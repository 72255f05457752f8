#!/usr/bin/env python3
"""GPU-side time of a fenced dispatch / combine posted from Python, as epd-bench measures its
`daemon_fenced` mode, written as an epd-bench result ("mode": "python_fenced").

    /opt/torch/.venv/bin/python tests/bench/python_fenced_gpu.py --daemon bundle/bin/epd \\
        --merge-into tests/bench/results/standard-1xH200.json

Per op: the op is posted with wait = go fence and signal = done fence; the stream gets a sleep
kernel (the gate), a start event, "go = v", "wait done >= v" and an end event; Python waits
for the daemon's answer (on the cuda backend it comes once the op is queued on the daemon's
stream), so the gate hides posting; a sample whose gate ended before the answer arrived is
retried. The time between the events is the op as the frontend's stream sees it, the span
epd-bench times in its daemon_fenced mode. R = 1 (one GPU), the standard config by default.
--merge-into appends the result to an epd-bench JSON (same schema), else --json / stdout.
"""

import argparse
import json
import os
import platform
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
for root in (os.path.dirname(os.path.dirname(here)), os.path.dirname(here)):
    if os.path.isdir(os.path.join(root, "python", "epd")):
        sys.path.insert(0, os.path.join(root, "python"))
        break

import epd  # noqa: E402


def summary(us, selections, hidden, element_bytes):
    us = sorted(us)
    median = us[len(us) // 2]
    return {"iterations": len(us), "median_us": round(median, 3),
            "p99_us": round(us[min(len(us) - 1, len(us) * 99 // 100)], 3),
            "mean_us": round(sum(us) / len(us), 3), "min_us": round(us[0], 3),
            "max_us": round(us[-1], 3),
            "gbps": round(selections * hidden * element_bytes / (median * 1e-6) / 1e9, 3)}


def measure(args, torch):
    client = epd.Client(args.address)
    session = client.open_session(args.rank, "python-fenced-gpu")
    group = f"python-fenced-{args.rank}"
    session.create_group(group, world_size=1, ranks=[args.rank], experts=args.experts,
                         hidden=args.hidden, max_tokens_per_rank=args.tokens, top_k=args.topk,
                         dtype="bf16")
    handle = session.create_handle(group, data_path="daemon")  # the fenced daemon path
    device = torch.device("cuda", torch.cuda.current_device())
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.tokens, args.hidden, generator=g).to(torch.bfloat16).to(device)
    # Random routing: K distinct experts per token.
    idx = torch.rand(args.tokens, args.experts, generator=g).argsort(dim=1)[:, :args.topk]
    idx = idx.to(torch.int32).to(device)
    w = torch.rand(args.tokens, args.topk, generator=g).to(device)
    out = torch.empty_like(x)
    refs = {name: session.register(t, name) for name, t in
            (("x", x), ("idx", idx), ("w", w), ("out", out))}
    session.update(handle, refs["idx"], refs["w"], blocking=True)
    go, done = session.create_fence(), session.create_fence()
    stream = torch.cuda.Stream()
    value = 0
    timings = {"dispatch": [], "combine": []}
    retries = 0
    for i in range(args.warmup + args.iterations):
        for op in ("dispatch", "combine"):
            while True:
                value += 1
                if op == "dispatch":
                    session.dispatch(handle, refs["x"], wait=(go, value), signal=(done, value))
                else:
                    session.combine(handle, refs["out"], wait=(go, value), signal=(done, value))
                start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                gate_done = torch.cuda.Event()
                with torch.cuda.stream(stream):
                    torch.cuda._sleep(args.gate_cycles)
                    gate_done.record(stream)
                    start.record(stream)
                    go.signal_on_stream(value, stream)
                    done.wait_on_stream(value, stream)
                    end.record(stream)
                session.sync()  # the daemon queued the op on its stream
                late = gate_done.query()
                end.synchronize()
                if not late:
                    break
                retries += 1
                if retries > 10 * (args.warmup + args.iterations):
                    raise RuntimeError("the gate keeps ending before the daemon answers: raise "
                                       "--gate-cycles")
            if i >= args.warmup:
                timings[op].append(start.elapsed_time(end) * 1000.0)
    session.close()
    client.close()
    selections = args.tokens * args.topk
    return {op: summary(us, selections, args.hidden, 2) for op, us in timings.items()}, retries


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default="unix:///run/epd/epd.sock")
    parser.add_argument("--daemon", help="start this epd binary (cuda backend, GPU --rank)")
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=7168)
    parser.add_argument("--topk", type=int, default=8)
    parser.add_argument("--experts", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gate-cycles", type=int, default=4_000_000,
                        help="length of the sleep gate in GPU clock cycles (~2 ms)")
    parser.add_argument("--json", help="write the epd-bench JSON here")
    parser.add_argument("--merge-into", help="append the result to this epd-bench JSON")
    args = parser.parse_args()
    import torch
    if not torch.cuda.is_available():
        print("python_fenced_gpu: no CUDA device", file=sys.stderr)
        return 2
    torch.cuda.set_device(args.rank)
    daemon = None
    if args.daemon:
        sys.path.insert(0, os.path.join(os.path.dirname(epd.__file__), "..", "examples"))
        import _common
        daemon = _common.PrivateDaemon(args.daemon, "cuda", args.rank + 1)
        args.address = daemon.address
    try:
        ops, retries = measure(args, torch)
    finally:
        if daemon:
            daemon.stop()
    result = {
        "case": {"ranks": 1, "hidden": args.hidden, "top_k": args.topk, "experts": args.experts,
                 "max_tokens": args.tokens, "tokens": args.tokens, "dtype": "bf16",
                 "layout": "expert_major", "algorithm": "low_latency", "routing": "random",
                 "seed": args.seed, "hot_experts": 0, "hot_percent": 0, "expert_capacity": 0},
        "mode": "python_fenced",
        "timing": "cuda events on the frontend's stream around [signal go][wait done], behind a "
                  f"sleep gate (posted from Python; {retries} late gates retried)",
        "handle_bytes": 0, "selections_per_rank": args.tokens * args.topk, "ops": ops,
        "check": "not checked (timing only)", "error": None}
    if args.merge_into:
        with open(args.merge_into) as f:
            report = json.load(f)
        report["results"].append(result)
        with open(args.merge_into, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    report = {"schema": "epd-bench/1", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "host": platform.node(), "backend": "cuda", "ranks": 1,
              "devices": [torch.cuda.get_device_name(args.rank)], "nccl_version": "",
              "settings": {"warmup": args.warmup, "iterations": args.iterations,
                           "seed": args.seed}, "control": {}, "results": [result]}
    text = json.dumps(report, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
