"""The dispatch section of docs/benchmarks.md from the results of bench/dispatch.

usage: dispatch_report.py RESULTS_JSON OUT
"""

import json
import statistics
import sys

import benchlib

HEAD = "## Dispatch: one control plane, 1–3 data planes"
TARGET_P99_MS = 5.0


def med(rs, f):
    return statistics.median(f(r) for r in rs)


def mib(kib):
    return f"{kib / 1024:.0f}"


def cpu_parts(r):
    """CPU seconds from the first POST until all succeeded: the control plane, the data
    planes, PostgreSQL (None when not measured), this client, the rest of the machine."""
    c = r["cpu_s"]
    dps = sum(v for k, v in c.items() if k.startswith("dp-"))
    pg = c.get("postgres")
    rest = c["machine"] - c["cp"] - dps - c["client"] - (pg or 0)
    return c["cp"], dps, pg, c["client"], rest


def per_run_ms(rs, i):
    if any(cpu_parts(r)[i] is None for r in rs):
        return "–"
    return f"{med(rs, lambda r: cpu_parts(r)[i] / r['transfers'] * 1000):.1f}"


def spread(r):
    return " / ".join(str(v) for v in r["spread"].values())


def trio(d, digits):
    return f"{d['p50']:.{digits}f} / {d['p99']:.{digits}f} / {d['max']:.{digits}f}"


def main():
    path, out = sys.argv[1:3]
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    meta = doc["meta"]
    failed = [r for r in doc["results"] if "error" in r]
    results = [r for r in doc["results"] if "error" not in r]
    by_n = {}
    for r in results:
        by_n.setdefault(r["planes"], []).append(r)
    problems = [] if results else ["no results"]
    problems += [f"{r['planes']} data planes, rep {r['rep']} failed: {r['error']}"
                 for r in failed]
    n_runs = meta["transfers"]
    new = [
        HEAD,
        "",
        "`bench/dispatch` starts one control plane (`ferry serve --role control`, PostgreSQL "
        "store in a fresh database) and N data planes (`ferry dataplane --capacity "
        f"{meta['capacity']}`, each with its own data directory) on loopback, release build, "
        f"then creates {n_runs} one-time transfers of one "
        f"{benchlib.human_bytes(meta['file_bytes'])} file each (file → file) from "
        f"{meta['clients']} client threads as fast as the API takes them. **runs/s** is "
        f"{n_runs} / the time from the first POST to the last `RunSucceeded` event. "
        "**select** is the `selectMs` of the `RunDispatched` events (claiming the run for "
        "this control plane, then choosing the data plane under the registry's row lock), "
        "**dispatch** their `dispatchMs` (that + handing the claim to the data plane + the "
        "Dataplane Signaling `start` request to it), over all runs of a "
        "repetition; **all dispatched** is when the last of them was sent, from the first "
        "POST. **CPU per run** is the CPU time of the control plane, of all data "
        f"planes together and of the PostgreSQL server over the timed window, / {n_runs}. "
        "Every output is checked to be byte-identical to its input. Medians of "
        f"{meta['reps']} repetitions, each on a fresh database and fresh processes; the "
        "numbers of data planes take turns within each repetition.",
        "",
        f"Machine: {meta['cpus']} CPUs ({meta['cpu']}), shared with other work and noisy; "
        f"PostgreSQL {meta['postgres']} on the same machine; {meta['ferry']}; "
        f"{meta['date']}. The control plane, every data plane, PostgreSQL and the client "
        "share these cores.",
        "",
        "| data planes | runs/s | wall s | all dispatched s | select p50 / p99 / max ms | "
        "dispatch p50 / p99 / max ms | runs per data plane | CPU per run ms: control / data "
        "planes / PostgreSQL | machine CPU busy | peak RSS control / each data plane |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for n, rs in sorted(by_n.items()):
        busy = med(rs, lambda r: r["cpu_s"]["machine"] / r["polled_s"] / meta["cpus"])
        dp_rss = statistics.median(v for r in rs for k, v in r["rss_kib"].items() if k != "cp")
        d = {q: med(rs, lambda r: r["dispatch_ms"][q]) for q in ("p50", "p99", "max")}
        new.append(
            f"| {n} | **{med(rs, lambda r: r['runs_per_s']):.1f}** | "
            f"{med(rs, lambda r: r['wall_s']):.2f} | "
            f"{med(rs, lambda r: r['dispatched_s']):.2f} | "
            f"{trio({q: med(rs, lambda r: r['select_ms'][q]) for q in d}, 3)} | "
            f"{d['p50']:.2f} / **{d['p99']:.2f}** / {d['max']:.2f} | "
            f"{'; '.join(sorted({spread(r) for r in rs}))} | "
            f"{per_run_ms(rs, 0)} / {per_run_ms(rs, 1)} / {per_run_ms(rs, 2)} | "
            f"{busy * 100:.0f}% | {mib(med(rs, lambda r: r['rss_kib']['cp']))} / "
            f"{mib(dp_rss)} MiB |"
        )
    ns = sorted(by_n)
    if len(ns) > 1:
        lo, hi = (med(by_n[n], lambda r: r["runs_per_s"]) for n in (ns[0], ns[-1]))
        new += [
            "",
            f"With {ns[-1]} data planes the rate is {hi / lo:.2f}× that with {ns[0]}. The "
            f"data planes compete with the control plane and PostgreSQL for the same "
            f"{meta['cpus']} cores, so here more data planes add no CPU to run on; *machine "
            "CPU busy* is the share of all cores busy (any process) during the timed window.",
        ]
    if by_n and all("postgres" in r["cpu_s"] for r in results):
        total = med(results, lambda r: sum(cpu_parts(r)[:4]) / r["transfers"] * 1000)
        pg = med(results, lambda r: cpu_parts(r)[2] / sum(cpu_parts(r)[:4]))
        new += [
            "",
            f"The processes of the benchmark together use {total:.1f} ms of CPU per run "
            f"(median over all repetitions; PostgreSQL {pg * 100:.0f}% of it), so "
            f"{meta['cpus']} cores cannot finish more than about "
            f"{meta['cpus'] * 1000 / total:.0f} runs/s, however many data planes there are.",
        ]
    alone = {n: rs for n, rs in by_n.items() if all(r.get("alone_dispatch_ms") for r in rs)}
    if alone:
        new += [
            "",
            f"One at a time: after the burst, {meta['alone']} more transfers, each created "
            "once the last has succeeded, so no other run is created or dispatched meanwhile "
            "(medians over the repetitions):",
            "",
            "| data planes | select p50 / p99 / max ms | dispatch p50 / p99 / max ms |",
            "|---:|---:|---:|",
        ]
        for n, rs in sorted(alone.items()):
            sel = {q: med(rs, lambda r: r["alone_select_ms"][q]) for q in ("p50", "p99", "max")}
            dis = {q: med(rs, lambda r: r["alone_dispatch_ms"][q]) for q in sel}
            new.append(f"| {n} | {trio(sel, 3)} | {trio(dis, 2)} |")
    ok, verdicts = bool(by_n), []
    for n, rs in sorted(by_n.items()):
        p99 = med(rs, lambda r: r["dispatch_ms"]["p99"])
        ok &= p99 < TARGET_P99_MS
        verdicts.append(f"{n}: {p99:.2f} ms")
    target = (f"Target: selection + dispatch under {TARGET_P99_MS:.0f} ms per run at p99. "
              f"Median p99 of `dispatchMs` by number of data planes in the burst of {n_runs}: "
              f"{', '.join(verdicts)} — {'✓' if ok else '✗'}")
    if alone:
        p99s = {n: med(rs, lambda r: r["alone_dispatch_ms"]["p99"]) for n, rs in alone.items()}
        target += ("; one at a time: "
                   + ", ".join(f"{n}: {v:.2f} ms" for n, v in sorted(p99s.items()))
                   + f" — {'✓' if all(v < TARGET_P99_MS for v in p99s.values()) else '✗'}")
    new += [
        "",
        target + ".",
        "",
        "All repetitions (CPU seconds over the timed window):",
        "",
        "| data planes | rep | runs/s | POSTs done s | select p99 ms | dispatch p50 / p99 / "
        "max ms | runs per data plane | re-dispatched | warnings | CPU s: control / data "
        "planes / PostgreSQL / client / rest | peak RSS control / data planes MiB |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: (r["planes"], r["rep"])):
        dps = sorted(k for k in r["rss_kib"] if k != "cp")
        warnings = ", ".join(f"{k} {v}" for k, v in sorted(r["warnings"].items())) or "none"
        cp, dp, pg, client, rest = cpu_parts(r)
        pg = "–" if pg is None else f"{pg:.1f}"
        new.append(
            f"| {r['planes']} | {r['rep']} | {r['runs_per_s']:.1f} | {r['submit_s']:.2f} | "
            f"{r['select_ms']['p99']:.3f} | {trio(r['dispatch_ms'], 2)} | {spread(r)} | "
            f"{r['redispatched']} | {warnings} | {cp:.1f} / {dp:.1f} / {pg} / {client:.1f} / "
            f"{rest:.1f} | {mib(r['rss_kib']['cp'])} / "
            f"{' '.join(mib(r['rss_kib'][k]) for k in dps)} |"
        )
        if r["redispatched"] or r["warnings"]:
            problems.append(f"{r['planes']} data planes, rep {r['rep']}: re-dispatched "
                            f"{r['redispatched']}, warnings {r['warnings']}")
    if failed:
        new += ["", "Failed repetitions (not in the medians):", ""]
        new += [f"- {r['planes']} data plane(s), rep {r['rep']}: {r['error']}" for r in failed]
    new += [
        "",
        "```sh",
        "scripts/services up && eval \"$(scripts/services env)\"   # the PostgreSQL server",
        "bench/dispatch                                 # 1, 2 and 3 data planes, 3 repetitions",
        "BENCH_REPS=1 BENCH_PLANES=2 BENCH_OUT=/tmp/d.md bench/dispatch   # quick run",
        "```",
    ]
    if not ok:
        problems.append(f"target missed: p99 dispatch {', '.join(verdicts)}")
    return benchlib.write_section("dispatch_report", out, HEAD, new, problems)


if __name__ == "__main__":
    sys.exit(main())
