"""The delegation section of docs/benchmarks.md from one run of bench/delegate.

usage: delegate_report.py RUN_DIR OUT

RUN_DIR holds `meta` (key=value lines) and `results.tsv` (one line per run; rep "w" is the
warm-up, left out). Runs whose status is not "ok" are listed and left out of the medians;
they make the script exit with status 3. A missed target is reported in the section (and
on stderr) but is not an error.
"""

import csv
import os
import statistics
import sys

import benchlib

HEAD = "## Delegation: ferry + rclone rcd against rclone copy"
TARGET_OVERHEAD = 0.05  # ferry-delegated wall ≤ 1.05 × rclone-direct

CASE_LABEL = {
    "rclone-direct": "rclone-direct (`rclone copy`)",
    "ferry-delegated": "ferry-delegated (`engine: rclone-bench`)",
    "ferry-in-process": "ferry-in-process (`engine: inProcess`)",
    "ferry-auto": "ferry-auto (no `spec.execution`)",
}
TREE_LABEL = {"big": "big file", "small": "small files"}


def fnum(s):
    return None if s in (None, "") else benchlib.num(s)


def read_results(path):
    runs = []
    with open(path, encoding="utf-8") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            runs.append({
                "tree": r["tree"], "case": r["case"], "rep": r["rep"],
                "wall": fnum(r["wall_s"]), "api": fnum(r["api_s"]), "cpu": fnum(r["cpu_s"]),
                "s3s_cpu": fnum(r["s3s_cpu_s"]), "other_cpu": fnum(r["other_cpu_s"]),
                "rss_mib": (fnum(r["rss_kib"]) or 0) / 1024,
                "serve_rss_mib": None if fnum(r["serve_rss_kib"]) is None else fnum(r["serve_rss_kib"]) / 1024,
                "rcd_rss_mib": None if fnum(r["rcd_rss_kib"]) is None else fnum(r["rcd_rss_kib"]) / 1024,
                "phase": r["phase"], "engine": r["engine"], "rule": r["rule"],
                "routing": fnum(r["routing_ms"]), "status": r["status"],
                "ok": r["status"] == "ok",
            })
    return runs


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def pct(ratio):
    return "–" if ratio is None else f"{(ratio - 1) * 100:+.1f} %"


def main():
    run_dir, out = sys.argv[1:3]
    meta = benchlib.read_meta(os.path.join(run_dir, "meta"))
    runs = read_results(os.path.join(run_dir, "results.tsv"))
    trees = meta.get("trees", "big small").split()
    cases = meta.get("cases", "").split()
    problems = []
    timed = [r for r in runs if r["rep"] != "w"]
    if not timed:
        problems.append("no timed runs")
    for r in runs:
        if not r["ok"]:
            problems.append(f"{r['tree']} {r['case']} rep {r['rep']}: {r['status']}")

    def sel(tree, case):
        return [r for r in timed if r["tree"] == tree and r["case"] == case and r["ok"]]

    def wall(tree, case):
        return med(r["wall"] for r in sel(tree, case))

    mib = {t: int(meta.get(f"bytes_{t}", 0)) / 1048576 for t in trees}
    files = {t: int(meta.get(f"files_{t}", 0)) for t in trees}
    reps = meta.get("reps", "?")
    debug = meta.get("ferry_bin", "release") != "release"
    cpus = meta.get("cpus", "?")

    new = [HEAD, ""]
    new.append(
        f"`bench/delegate`, one run on this machine ({cpus} CPUs, {meta.get('cpu', '?')}, "
        f"{meta.get('mem_gib', '?')} GiB), {meta.get('date', '?')}: {meta.get('ferry', 'ferry')} "
        f"(commit {meta.get('ferry_commit', '?')}), {meta.get('rclone', 'rclone')}, S3 = "
        f"{meta.get('s3s', 's3s-fs')} on loopback, sharing the CPUs with what is measured. "
        f"Local → S3, medians of {reps} repetition{'' if reps == '1' else 's'}"
        + (" after one untimed warm-up run of every case" if meta.get("warmup") == "1" else "")
        + "; the order of the cases rotates every repetition, every run copies the whole tree "
        f"into a fresh prefix, and the S3 root is emptied (then `sync`, {meta.get('settle', '?')} s "
        "pause) after each run. Load average at start / end: "
        f"{meta.get('loadavg_start', '?')} / {meta.get('loadavg_end', '?')}.")
    if debug:
        new += ["", f"**Trial run with `{meta.get('ferry_bin')}` (not a release build) and "
                "reduced sizes: these numbers say nothing about ferry's speed.**"]
    new += [
        "",
        "- **rclone-direct**: `rclone copy DIR :s3,provider=Other,…:bench/PREFIX`, rclone's "
        "defaults (4 transfers, 8 checkers; `rclone rcd` has the same), a new process per run "
        "timed by GNU `time` (wall, user + sys CPU, peak RSS).",
        "- **ferry-delegated**: one `ferry serve` for the whole run, whose settings list a "
        "private `rclone rcd` as the engine `rclone-bench` (`delegateAboveBytes: "
        f"{meta.get('delegate_above', '?')}`, `pollSeconds: {meta.get('poll_seconds', '?')}`); "
        "`POST /v1/transfers` of a one-time transfer with `spec.execution.engine: rclone-bench`. "
        "Wall = from the POST to the poll of `GET /v1/transfers/NAME/runs` (every 50 ms) that "
        "sees `Succeeded`; API = the run's `finishedAt − createdAt`, as a cross-check.",
        "- **ferry-in-process**: the same transfer with `spec.execution.engine: inProcess`, "
        "ferry's own engine in the same server.",
    ]
    if "ferry-auto" in cases:
        new.append(
            "- **ferry-auto**: the same transfer without `spec.execution`: the default routing, "
            f"by the source's estimated size against `delegateAboveBytes: {meta.get('delegate_above', '?')}` "
            "(the source is listed for the estimate).")
    new += [
        "",
        "CPU is rclone's user + sys for rclone-direct and the CPU time of `ferry serve` + "
        "`rclone rcd` during the run for the ferry cases (s3s-fs is left out of both). Peak RSS "
        "is GNU time's for rclone-direct; for the ferry cases it is the largest sum of the "
        "VmRSS of `ferry serve` and `rclone rcd` sampled every 50 ms (serve / rcd in brackets): "
        "both are long-lived, so their RSS includes what earlier runs left behind.",
    ]

    for tree in trees:
        n_files, size = files[tree], mib[tree]
        what = (f"one file of {benchlib.human_bytes(size * 1048576)}" if n_files == 1
                else f"{n_files:,} files, {benchlib.human_bytes(size * 1048576)} in all")
        new += ["", f"### {TREE_LABEL.get(tree, tree)}: {what}", ""]
        new.append("| case | ran on (rule) | wall s | min–max s | MiB/s | files/s | CPU s | "
                   "peak RSS MiB | API s | runs |")
        new.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for case in cases:
            ok = sel(tree, case)
            n_all = len([r for r in timed if r["tree"] == tree and r["case"] == case])
            if not ok:
                new.append(f"| {CASE_LABEL.get(case, case)} | – | – | – | – | – | – | – | – | 0 of {n_all} |")
                continue
            w = med(r["wall"] for r in ok)
            lo, hi = min(r["wall"] for r in ok), max(r["wall"] for r in ok)
            engines = sorted({(r["engine"] + (f" ({r['rule']})" if r["rule"] else "")) for r in ok})
            rss = max(r["rss_mib"] for r in ok)
            if case == "rclone-direct":
                rss_s = f"{rss:.0f}"
            else:
                sv = max(r["serve_rss_mib"] or 0 for r in ok)
                rc = max(r["rcd_rss_mib"] or 0 for r in ok)
                rss_s = f"{rss:.0f} ({sv:.0f} / {rc:.0f})"
            api = med(r["api"] for r in ok)
            new.append(
                f"| {CASE_LABEL.get(case, case)} | {', '.join(engines)} | {w:.2f} | "
                f"{lo:.2f}–{hi:.2f} | {size / w:.1f} | {'–' if n_files == 1 else f'{n_files / w:,.0f}'} | "
                f"{benchlib.fmt(med(r['cpu'] for r in ok))} | {rss_s} | {benchlib.fmt(api)} | "
                f"{len(ok)} of {n_all} |")

    # Targets and comparisons.
    new += ["", "### Delegation overhead and where runs should go", ""]
    have = set(cases)
    if {"rclone-direct", "ferry-delegated"} <= have:
        new.append("| tree | rclone-direct s | ferry-delegated s | ratio | overhead | "
                   f"target ≤ {TARGET_OVERHEAD * 100:.0f} % wall |")
        new.append("|---|---:|---:|---:|---:|---|")
        for tree in trees:
            d, f = wall(tree, "rclone-direct"), wall(tree, "ferry-delegated")
            if d is None or f is None:
                new.append(f"| {TREE_LABEL.get(tree, tree)} | {benchlib.fmt(d)} | {benchlib.fmt(f)} | – | – | no data |")
                continue
            ratio = f / d
            met = ratio <= 1 + TARGET_OVERHEAD
            new.append(f"| {TREE_LABEL.get(tree, tree)} | {d:.2f} | {f:.2f} | {ratio:.3f}× | "
                       f"{pct(ratio)} | {'✓ met' if met else '✗ missed'} |")
            if not met:
                print(f"delegate_report: target missed for the {tree} tree: delegation overhead "
                      f"{pct(ratio)} (> {TARGET_OVERHEAD * 100:.0f} %)", file=sys.stderr)
        new += ["", "The overhead includes ferry's HTTP API, the run's bookkeeping, "
                f"the engine's polling of rcd every {meta.get('poll_seconds', '?')} s "
                "(up to that much after rclone has finished) and the client's 50 ms polling; "
                "rclone-direct pays for starting a process instead."]
    if {"ferry-in-process", "ferry-delegated"} <= have:
        new += ["", "| tree | ferry-in-process s | ferry-delegated s | faster |",
                "|---|---:|---:|---|"]
        verdict = {}
        for tree in trees:
            i, d = wall(tree, "ferry-in-process"), wall(tree, "ferry-delegated")
            if i is None or d is None:
                new.append(f"| {TREE_LABEL.get(tree, tree)} | {benchlib.fmt(i)} | {benchlib.fmt(d)} | – |")
                continue
            if i <= d:
                verdict[tree] = "in-process"
                text = f"in-process, {d / i:.2f}× less wall"
            else:
                verdict[tree] = "delegated"
                text = f"delegated, {i / d:.2f}× less wall"
            new.append(f"| {TREE_LABEL.get(tree, tree)} | {i:.2f} | {d:.2f} | {text} |")
        if len(verdict) == 2 and {"big", "small"} <= set(verdict):
            b, s = verdict["big"], verdict["small"]
            if b == "delegated" and s == "in-process":
                why = ("rclone is faster for the big file and ferry's own engine for many small "
                       "files, so a size threshold in between (the default `delegateAboveBytes`) "
                       "routes both to the faster engine here.")
            elif b == "in-process" and s == "in-process":
                why = ("ferry's own engine is faster for both the big file and the many small "
                       "files, so on this machine delegating by size buys no wall time and a "
                       "default `delegateAboveBytes` cannot be justified by speed; delegation "
                       "here is for taking work off the data plane (CPU, memory, connections).")
            elif b == "delegated" and s == "delegated":
                why = ("rclone through rcd is faster for both the big file and the many small "
                       "files here, so delegation would pay off even below the size threshold.")
            else:
                why = ("ferry's own engine is faster for the big file and rclone for the many "
                       "small files: total size alone does not pick the faster engine here.")
            new += ["", f"For a default `delegateAboveBytes`: {why}"]

    # Routing.
    routed = [(tree, case) for tree in trees for case in cases if case != "rclone-direct"]
    if routed:
        new += ["", "Routing time, from the run's events: median `RunRouted.time − RunStarted.time` "
                "(ms resolution). Only a run without `spec.execution` (ferry-auto) lists its "
                "source, for the size estimate against `delegateAboveBytes`, whichever way it is "
                "then routed; a run naming its engine (`rclone-bench` or `inProcess`) is routed "
                "without listing.", "",
                "| tree | case | rule | routing ms, median (min–max) | what it includes |",
                "|---|---|---|---:|---|"]
        for tree, case in routed:
            ok = sel(tree, case)
            vals = [r["routing"] for r in ok if r["routing"] is not None]
            rules = sorted({r["rule"] for r in ok if r["rule"]})
            if not vals:
                continue
            label = ("routing incl. listing" if case == "ferry-auto"
                     else "routing (engine named: no listing)")
            new.append(f"| {TREE_LABEL.get(tree, tree)} | {case} | {', '.join(rules) or '–'} | "
                       f"{med(vals):.0f} ({min(vals):.0f}–{max(vals):.0f}) | {label} |")

    # Peak RSS over the run.
    rd = [r["rss_mib"] for r in timed if r["case"] == "rclone-direct" and r["ok"]]
    serve_hwm = fnum(meta.get("serve_hwm_kib"))
    rcd_hwm = fnum(meta.get("rcd_hwm_kib"))
    new += ["", "Peak RSS over the whole run (VmHWM, which cannot be reset, so it covers every "
            "case including the warm-up): "
            f"`ferry serve` {benchlib.fmt(serve_hwm / 1024 if serve_hwm else None, 0)} MiB, "
            f"`rclone rcd` {benchlib.fmt(rcd_hwm / 1024 if rcd_hwm else None, 0)} MiB"
            + (f"; `rclone copy` at most {max(rd):.0f} MiB in any run." if rd else ".")]

    disturbed = [r for r in timed if r["ok"] and r["other_cpu"] is not None and r["wall"]
                 and r["other_cpu"] > 0.25 * r["wall"]]
    if disturbed:
        n_ok = len([r for r in timed if r["ok"]])
        text = (f"{len(disturbed)} of {n_ok} timed runs shared the machine with other work "
                "(more than a quarter of a CPU on average used by neither the client nor s3s-fs, "
                "from /proc/stat)")
        if len(disturbed) <= 6:
            text += ": " + ", ".join(f"{r['tree']} {r['case']} rep {r['rep']} ({r['other_cpu']:.1f} "
                                     f"CPU s in {r['wall']:.1f} s)" for r in disturbed)
        else:
            other = med(r["other_cpu"] / r["wall"] for r in disturbed)
            text += f", a median of {other:.1f} CPUs besides the client and s3s-fs"
        new += ["", text + "; their walls are less trustworthy."]
    failed = [r for r in runs if not r["ok"]]
    if failed:
        new += ["", "Failed runs (left out of the medians):", ""]
        new += [f"- {r['tree']} {r['case']} rep {r['rep']}: {r['status']}" for r in failed]

    new += [
        "",
        "```sh",
        "bench/delegate                                 # 2 GiB file + 10,000 × 4 KiB, 3 repetitions",
        "BENCH_REPS=1 BENCH_BIG_MIB=64 BENCH_SMALL_FILES=200 BENCH_BUILD=0 \\",
        "  FERRY_BIN=target/debug/ferry BENCH_OUT=/tmp/d.md bench/delegate   # a quick trial",
        "```",
    ]
    return benchlib.write_section("delegate_report", out, HEAD, new, problems)


if __name__ == "__main__":
    sys.exit(main())
