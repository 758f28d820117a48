"""The service section of docs/benchmarks.md from the runs of bench/service.

usage: service_report.py RUNS_DIR OUT
"""

import glob
import json
import os
import statistics
import sys

import benchlib

HEAD = "## Service API: ferry serve under load"
TARGET_P99_MS = 20.0


def main():
    runs_dir, out = sys.argv[1:3]
    meta = benchlib.read_meta(os.path.join(runs_dir, "meta"))
    reps = []
    for d in sorted(glob.glob(os.path.join(runs_dir, "rep-*"))):
        with open(os.path.join(d, "result.json"), encoding="utf-8") as f:
            result = json.load(f)
        with open(os.path.join(d, "peak_rss_kib"), encoding="utf-8") as f:
            result["peak_rss_mib"] = int(f.read().strip() or 0) / 1024
        reps.append(result)
    problems = []
    if not reps:
        problems.append("no repetitions found")
    p99 = statistics.median(r["all"]["p99_ms"] for r in reps) if reps else float("nan")
    errors = sum(r["errors"] for r in reps)
    ok = p99 < TARGET_P99_MS and errors == 0
    new = [
        HEAD,
        "",
        "`bench/service` starts `ferry serve` (embedded SQLite store, release build) on "
        "loopback and drives it with the open-loop load generator "
        "`crates/ferry-api/examples/load.rs` on the same machine: "
        f"{meta.get('rate')} requests/s for {meta.get('seconds')} s after a warm-up, "
        f"{float(meta.get('post_share', 0)) * 100:.0f}% POSTs creating transfers, the rest "
        "list (by label), get and runs of 10 seeded transfers. A latency counts from when "
        "the request was due, so a stalled server cannot hide its queue. Every repetition "
        "starts a fresh server.",
        "",
        f"Machine: {meta.get('cpus')} CPUs ({meta.get('cpu')}), {meta.get('ferry')}, "
        f"{meta.get('date')}.",
        "",
        "| rep | achieved req/s | errors | p50 ms | p90 ms | p99 ms | max ms | p99 GET get/list/runs ms | p99 POST ms | server peak RSS |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(reps, 1):
        a = r["all"]
        new.append(
            f"| {i} | {r['achieved_rate']:.0f} | {r['errors']} | {a['p50_ms']:.2f} | "
            f"{a['p90_ms']:.2f} | {a['p99_ms']:.2f} | {a['max_ms']:.1f} | "
            f"{r['get']['p99_ms']:.2f} / {r['list']['p99_ms']:.2f} / {r['runs']['p99_ms']:.2f} | "
            f"{r['create']['p99_ms']:.2f} | {r['peak_rss_mib']:.0f} MiB |"
        )
    new += [
        "",
        f"Target: p99 under {TARGET_P99_MS:.0f} ms at {meta.get('rate')} requests/s with no "
        f"errors. Median p99 over {len(reps)} repetitions: **{p99:.2f} ms**, errors: "
        f"**{errors}** — {'✓' if ok else '✗'}.",
        "",
        "```sh",
        "bench/service                                   # 3 repetitions of 30 s at 500 req/s",
        "BENCH_RATE=1000 BENCH_SECONDS=10 BENCH_REPS=1 bench/service",
        "```",
    ]
    if not ok:
        problems.append(f"target missed: p99 {p99:.2f} ms, errors {errors}")
    return benchlib.write_section("service_report", out, HEAD, new, problems)


if __name__ == "__main__":
    sys.exit(main())
