#!/usr/bin/env python3
"""Host time to post one fenced op from Python, beside the C++ client's (epd-post-bench).

    python3 tests/bench/python_post_latency.py --address unix:///run/epd/epd.sock \\
        --cpp-bench build/bin/epd-post-bench --json results/post-latency.json
    python3 tests/bench/python_post_latency.py --daemon build/bin/epd   # private cpu daemon
    python tests/bench/python_post_latency.py --daemon bundle/bin/epd --backend cuda

Measured spans (time.perf_counter_ns around the calls a frontend makes per op):
  python_session  Session.combine(handle, out, wait=(fence_in, v), signal=(fence_out, v)),
                  plus on GPUs fence_in.signal_on_stream / fence_out.wait_on_stream;
  python_layer    Buffer.combine() in its default fenced mode (GPU only: on the cpu backend the
                  layer waits for completion on the host);
  cpp             epd-post-bench's CombineAsync (+ the two fence stream ops on GPUs).
The daemon completes each op before the next is timed. Writes JSON (schema
"epd-post-latency/1") with {iterations, median_us, p99_us, mean_us, min_us, max_us} per span.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
for root in (os.path.dirname(os.path.dirname(here)), os.path.dirname(here)):
    if os.path.isdir(os.path.join(root, "python", "epd")):
        sys.path.insert(0, os.path.join(root, "python"))
        break

import epd  # noqa: E402

K, H, T, E = 2, 128, 16, 8


def summary(ns):
    us = sorted(v / 1000 for v in ns)
    return {"iterations": len(us), "median_us": round(us[len(us) // 2], 3),
            "p99_us": round(us[min(len(us) - 1, len(us) * 99 // 100)], 3),
            "mean_us": round(sum(us) / len(us), 3), "min_us": round(us[0], 3),
            "max_us": round(us[-1], 3)}


def measure(args):
    client = epd.Client(args.address)
    backend = client.node_info().backend
    session = client.open_session(args.rank, "python-post-latency")
    group = f"post-bench-python-{args.rank}"
    session.create_group(group, world_size=1, ranks=[args.rank], experts=E, hidden=H,
                         max_tokens_per_rank=T, top_k=K, dtype="fp32")
    handle = session.create_handle(group, data_path="daemon")  # measures posting ops
    buf = epd.Buffer(session, handle)
    on_gpu = backend == "cuda"
    if on_gpu:
        import torch
        torch.cuda.set_device(args.rank)
        x = torch.zeros(T, H, device="cuda")
        idx = (torch.arange(T * K, device="cuda") % E).view(T, K)
        stream = torch.cuda.current_stream()
    else:
        import numpy as np
        x = epd.shm_empty((T, H), "fp32")
        idx = epd.shm_like((np.arange(T * K) % E).reshape(T, K).astype(np.int32))
    buf.dispatch(x, idx, blocking=True)
    out = buf.combine(blocking=True)
    out_ref = session.register(out)
    fence_in, fence_out = session.create_fence(), session.create_fence()
    results = {"backend": backend}

    timings, clock = [], time.perf_counter_ns
    for i in range(args.warmup + args.iterations):
        v = i + 1
        start = clock()
        session.combine(handle, out_ref, wait=(fence_in, v), signal=(fence_out, v))
        if on_gpu:
            fence_in.signal_on_stream(v, stream)
            fence_out.wait_on_stream(v, stream)
        posted = clock()
        if i >= args.warmup:
            timings.append(posted - start)
        if on_gpu:
            stream.synchronize()
        else:
            fence_in.signal(v)
            fence_out.wait(v)
    session.sync()
    results["python_session"] = summary(timings)

    if on_gpu:
        timings = []
        for i in range(args.warmup + args.iterations):
            start = clock()
            buf.combine()
            posted = clock()
            if i >= args.warmup:
                timings.append(posted - start)
            stream.synchronize()
        session.sync()
        results["python_layer"] = summary(timings)
    buf.close()
    session.close()
    client.close()
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default="unix:///run/epd/epd.sock")
    parser.add_argument("--daemon", help="start this epd binary on a private socket")
    parser.add_argument("--backend", default="cpu", choices=["cpu", "cuda"],
                        help="backend of the --daemon one (cuda: GPUs 0..rank)")
    parser.add_argument("--cpp-bench", help="epd-post-bench binary to run beside (default: next "
                        "to --daemon, or bin/ of the bundle)")
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--target-us", type=float, default=20.0,
                        help="median python_session target; exit 1 above it with --check")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    daemon = None
    if args.daemon:
        sys.path.insert(0, os.path.join(os.path.dirname(epd.__file__), "..", "examples"))
        import _common
        daemon = _common.PrivateDaemon(args.daemon, args.backend,
                                       1 if args.backend == "cpu" else args.rank + 1)
        args.address = daemon.address
    try:
        report = {"schema": "epd-post-latency/1", "host": platform.node(),
                  "python": platform.python_version(),
                  "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        report.update(measure(args))
        cpp = args.cpp_bench
        if cpp is None:
            for candidate in ([os.path.join(os.path.dirname(args.daemon), "epd-post-bench")]
                              if args.daemon else []) + [
                    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(epd.__file__))),
                                 "bin", "epd-post-bench")]:
                if os.path.exists(candidate):
                    cpp = candidate
        if cpp:
            done = subprocess.run([cpp, "--address", args.address, "--rank", str(args.rank),
                                   "--iterations", str(args.iterations),
                                   "--warmup", str(args.warmup)],
                                  capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return 1
            report["cpp"] = json.loads(done.stdout)["post"]
    finally:
        if daemon:
            daemon.stop()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    if args.check and report["python_session"]["median_us"] > args.target_us:
        print(f"python_session median {report['python_session']['median_us']} us exceeds "
              f"{args.target_us} us", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
