"""Shared by the examples: finding the package, their command line, starting a private daemon,
running ranks."""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

# The package next to this folder (repository python/, or <bundle>/python).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class PrivateDaemon:
    """`epd` on a temporary unix socket (for demos and tests); stopped on exit."""

    def __init__(self, binary, backend, ranks):
        self.dir = tempfile.mkdtemp(prefix="epd-example-")
        self.socket = os.path.join(self.dir, "epd.sock")
        self.address = "unix://" + self.socket
        # No /metrics: a private daemon must not take the node's metrics port.
        args = [binary, "--backend", backend, "--listen", self.address, "--log-level", "warn",
                "--metrics-listen", ""]
        args += ["--cpu-ranks", str(ranks)] if backend == "cpu" else \
            ["--gpus", ",".join(str(r) for r in range(ranks))]
        self.process = subprocess.Popen(args)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"epd did not start (exit code {self.process.returncode})")
            time.sleep(0.01)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_ranks(target, ranks, args, timeout_s=300):
    """Runs target(rank, args) in one spawned process per rank; exit code 0 when all passed."""
    import multiprocessing as mp
    context = mp.get_context("spawn")  # CUDA needs spawn; harmless on the cpu backend
    processes = [context.Process(target=target, args=(r, args)) for r in range(ranks)]
    for p in processes:
        p.start()
    deadline = time.monotonic() + timeout_s
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
    failed = 0
    for r, p in enumerate(processes):
        if p.is_alive():
            p.kill()
            p.join()
            print(f"rank {r}: timed out after {timeout_s} s", file=sys.stderr)
            failed += 1
        elif p.exitcode != 0:
            print(f"rank {r}: exit code {p.exitcode}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def example_parser(doc, backend, ranks, experts, hidden, tokens, topk, iterations, group):
    """The examples' common command line, with each example's own defaults."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default="unix:///run/epd/epd.sock")
    parser.add_argument("--daemon", help=f"start this epd binary on a private socket ({backend})")
    parser.add_argument("--ranks", type=int, default=ranks)
    parser.add_argument("--experts", type=int, default=experts)
    parser.add_argument("--hidden", type=int, default=hidden)
    parser.add_argument("--tokens", type=int, default=tokens)
    parser.add_argument("--topk", type=int, default=topk)
    parser.add_argument("--iterations", type=int, default=iterations)
    parser.add_argument("--group", default=group)
    return parser


def run_example(rank_main, args, backend):
    """Runs rank_main on args.ranks ranks, against a private `backend` daemon when --daemon names
    one; exit code 0 when all passed."""
    daemon = None
    if args.daemon:
        daemon = PrivateDaemon(args.daemon, backend, args.ranks)
        args.address = daemon.address
    try:
        return run_ranks(rank_main, args.ranks, args)
    finally:
        if daemon:
            daemon.stop()
