#!/usr/bin/env python3
"""CI smoke of epd-bench: runs `epd-bench --backend cpu --smoke --json FILE`, then checks
that it exited 0 and that FILE is valid JSON in schema epd-bench/1 with every mode present,
no errors and passed combine checks."""
import json
import subprocess
import sys


def main():
    bench, json_path = sys.argv[1], sys.argv[2]
    run = subprocess.run([bench, "--backend", "cpu", "--smoke", "--json", json_path], timeout=50)
    if run.returncode != 0:
        sys.exit(f"epd-bench exited with {run.returncode}")
    with open(json_path) as f:
        doc = json.load(f)
    assert doc["schema"] == "epd-bench/1", doc.get("schema")
    results = doc["results"]
    modes = {r["mode"] for r in results}
    for mode in ("inproc", "daemon_fenced", "daemon_blocking"):
        assert mode in modes, f"mode {mode} missing: {sorted(modes)}"
    for r in results:
        assert r["error"] is None, r
        for op in ("update", "dispatch", "combine"):
            s = r["ops"][op]
            assert s["iterations"] >= 1 and s["median_us"] > 0, (r["mode"], op, s)
        if r["mode"] != "daemon_blocking":
            assert r["check"] == "passed", (r["mode"], r["case"], r["check"])
    for name in ("GetNodeInfo_unary", "update_n0_stream_blocking"):
        assert doc["control"][name]["iterations"] > 0, doc["control"]
    print(f"epd-bench smoke: {len(results)} results, modes {sorted(modes)}: OK")


if __name__ == "__main__":
    main()
