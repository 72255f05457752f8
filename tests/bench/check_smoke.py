#!/usr/bin/env python3
"""CI smoke of epd-bench: runs `epd-bench --backend cpu --smoke --json FILE [EXTRA...]`, then
checks that it exited 0 and that FILE is valid JSON in schema epd-bench/1 with every mode
present, no errors and passed combine checks. EXTRA: more epd-bench flags (e.g. the
high-throughput smoke: --algorithm high-throughput); an
`--algorithm NAME` there must be what every case ran. With `--nodes N` (N > 1: the ranks over N
daemons of one deployment, the groups spanning them) only the daemon modes run, and the
document must say N.

In a CUDA build on a host without a driver, epd-bench-frontend (client library: libcuda)
cannot start: then only the in-process mode runs and the test reports SKIPPED (exit 77)."""
import json
import os
import subprocess
import sys

SKIP = 77


def frontend_starts(bench):
    frontend = os.path.join(os.path.dirname(bench), "epd-bench-frontend")
    run = subprocess.run([frontend, "--help"], capture_output=True, timeout=20)
    return run.returncode == 0


def main():
    bench, json_path, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
    daemon_modes = frontend_starts(bench)
    nodes = int(extra[extra.index("--nodes") + 1]) if "--nodes" in extra else 1
    if nodes > 1 and not daemon_modes:
        print("epd-bench-frontend cannot start here (no CUDA driver?): no daemon modes: SKIPPED")
        sys.exit(SKIP)
    args = [bench, "--backend", "cpu", "--smoke", "--json", json_path] + extra
    if not daemon_modes:
        print("epd-bench-frontend cannot start here (no CUDA driver?): in-process mode only")
        args += ["--modes", "inproc"]
    run = subprocess.run(args, timeout=50)
    if run.returncode != 0:
        sys.exit(f"epd-bench exited with {run.returncode}")
    with open(json_path) as f:
        doc = json.load(f)
    assert doc["schema"] == "epd-bench/1", doc.get("schema")
    assert doc["nodes"] == nodes, (doc["nodes"], nodes)
    results = doc["results"]
    modes = {r["mode"] for r in results}
    expected = ("inproc", "daemon_fenced", "daemon_blocking") if daemon_modes else ("inproc",)
    if nodes > 1:
        expected = ("daemon_fenced", "daemon_blocking")
        assert "inproc" not in modes, sorted(modes)
    for mode in expected:
        assert mode in modes, f"mode {mode} missing: {sorted(modes)}"
    if "--algorithm" in extra:
        algorithm = extra[extra.index("--algorithm") + 1].replace("-", "_")
        for r in results:
            assert r["case"]["algorithm"] == algorithm, (algorithm, r["case"])
    for r in results:
        assert r["error"] is None, r
        if nodes > 1:  # the group payload the daemons exchanged, from their cluster views
            assert r["wire_bytes_per_layer"] > 0, (r["mode"], r["wire_bytes_per_layer"])
        for op in ("update", "dispatch", "combine"):
            s = r["ops"][op]
            assert s["iterations"] >= 1 and s["median_us"] > 0, (r["mode"], op, s)
        fp8 = r["case"]["dispatch_dtype"] == "fp8_e4m3"
        if r["mode"] == "inproc" or (r["mode"] == "daemon_fenced" and not fp8):
            assert r["check"] == "passed", (r["mode"], r["case"], r["check"])
    # Bytes moved per dispatched row: H + H/128 * 4 (fp8, fp32 scales) or H + H/128 (ue8m0)
    # instead of 2 H (bf16); every fp8 payload runs with both scale formats in the same run.
    moved = {}
    for r in results:
        c = r["case"]
        key = (r["mode"], c["layout"], c["routing"])
        fp8 = c["dispatch_dtype"] == "fp8_e4m3"
        payload = (c["dispatch_dtype"], c["prequantized"], c["scale_format"] if fp8 else None)
        moved.setdefault(key, {})[payload] = r["ops"]["dispatch"]["moved_bytes"]
    h = results[0]["case"]["hidden"]
    for key, by_payload in moved.items():
        token = by_payload[("bf16", False, None)]
        if not any(payload[0] == "fp8_e4m3" for payload in by_payload):
            continue  # a run without fp8 payloads (--dispatch-dtype token)
        for scale_format, scale_bytes in (("fp32", 4), ("ue8m0", 1)):
            for pre in (False, True):
                payload = ("fp8_e4m3", pre, scale_format)
                want = token * (h + h // 128 * scale_bytes) / (2 * h)
                got = by_payload[payload]
                assert abs(got - want) < 1e-6 * max(1.0, want), (key, scale_format, pre, by_payload)
    if not daemon_modes:
        print("epd-bench smoke: in-process mode OK; daemon modes SKIPPED")
        sys.exit(SKIP)
    for name in ("GetNodeInfo_unary", "update_n0_stream_blocking"):
        assert doc["control"][name]["iterations"] > 0, doc["control"]
    print(f"epd-bench smoke: {len(results)} results, modes {sorted(modes)}: OK")


if __name__ == "__main__":
    main()
