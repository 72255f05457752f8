#!/usr/bin/env python3
"""CI smoke of epd-restart-bench: three restarts of every variant on the cpu backend (two ranks,
a small shape), then checks the JSON it wrote: schema epd-restart-bench/1, every variant with
every restart, each restarted process's phases present and in the order it goes through them,
and the coordinator's wall time past the last of them."""
import json
import subprocess
import sys

RESTARTS = 3
# The phases each variant's processes report, in the order they happen.
PHASES = {
    "reattach": ["connected", "handle", "mapped", "tensors", "inputs", "first_layer", "wall"],
    "recreate": ["connected", "handle", "mapped", "tensors", "inputs", "first_layer", "wall"],
    "inproc": ["backend", "first_layer", "wall"],
}


def main():
    bench, json_path = sys.argv[1], sys.argv[2]
    args = [bench, "--backend", "cpu", "--ranks", "2", "--tokens", "16", "--hidden", "256",
            "--experts", "8", "--top-k", "2", "--restarts", str(RESTARTS), "--json", json_path]
    run = subprocess.run(args, timeout=100)
    if run.returncode != 0:
        sys.exit(f"epd-restart-bench exited with {run.returncode}")
    with open(json_path) as f:
        doc = json.load(f)
    if doc.get("schema") != "epd-restart-bench/1":
        sys.exit(f"schema {doc.get('schema')!r}")
    if doc.get("backend") != "cpu" or doc.get("ranks") != 2:
        sys.exit(f"ran on {doc.get('backend')} with {doc.get('ranks')} ranks, not cpu with 2")
    for variant, phases in PHASES.items():
        restarts = doc["restarts"].get(variant, [])
        if len(restarts) != RESTARTS:
            sys.exit(f"{variant}: {len(restarts)} restarts, expected {RESTARTS}")
        for i, restart in enumerate(restarts):
            missing = [p for p in phases if p not in restart]
            if missing:
                sys.exit(f"{variant} restart {i}: no {missing} in {restart}")
            times = [restart[p] for p in phases]
            if any(t <= 0 for t in times) or times != sorted(times):
                sys.exit(f"{variant} restart {i}: phases out of order: {restart}")
    print("epd-restart-bench smoke: every variant restarted", RESTARTS, "times, phases in order")


if __name__ == "__main__":
    main()
