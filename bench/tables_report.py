#!/usr/bin/env python3
"""Turn the raw measurements of bench/tables into one section of docs/benchmarks.md.

usage: tables_report.py META RESULTS OUTPUTS OUT

META     key=value lines written by bench/tables (machine, versions, commands)
RESULTS  tab-separated rows: case tool rep status wall user sys maxrss_kib machine_cpu
         query_s rows bytes import_s (query_s and import_s: DuckDB only, else "-")
OUTPUTS  tab-separated rows: case tool JSON ({"rows", "columns", "bytes"} of the first
         successful output of that tool and case)
OUT      markdown file; only the section under HEADING is replaced (or appended), the
         rest of the file is left as it is

Exit status: 0, or 3 when ferry's and DuckDB's outputs have different row counts.
"""

import json
import os
import statistics
import sys
from collections import defaultdict

TOOLS = ["ferry", "duckdb"]
RSS_LIMIT_MIB = 512.0
WALL_LIMIT = 1.00  # ferry wall time at most this times DuckDB's
CASE_DESC = {
    "a": "CSV → Parquet",
    "b": "Parquet → Parquet, 4 transformations",
}


def heading(sf):
    return f"## Tables: TPC-H lineitem SF{sf}, ferry vs DuckDB"


def read_meta(path):
    meta = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if "=" in line:
                key, value = line.split("=", 1)
                meta[key] = value
    return meta


def num(s):
    try:
        return float(s)
    except ValueError:
        return None


def read_results(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 13:
                continue
            (case, tool, rep, status, wall, user, sys_, rss, mcpu, inproc, nrows, nbytes,
             imp) = parts
            cpu = (num(user) or 0.0) + (num(sys_) or 0.0)
            machine = num(mcpu)
            rows.append({
                "case": case,
                "tool": tool,
                "rep": rep,
                "status": status,
                "ok": status == "ok",
                "wall": num(wall),
                "user": num(user),
                "sys": num(sys_),
                "cpu": cpu,
                "rss_mib": (num(rss) or 0.0) / 1024.0,
                "other_cpu": None if machine is None else max(0.0, machine - cpu),
                "inproc": num(inproc),
                "import": num(imp),
                "rows": int(nrows) if nrows.isdigit() else None,
                "out_mib": (num(nbytes) or 0.0) / 1048576 if nbytes.isdigit() else None,
            })
    return rows


def read_outputs(path):
    out = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.rstrip("\n").split("\t", 2)
                if len(parts) == 3:
                    out[(parts[0], parts[1])] = json.loads(parts[2])
    return out


def fmt(x, digits=2):
    return "–" if x is None else f"{x:.{digits}f}"


def human_bytes(n):
    n = float(n)
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"]:
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class Summary:
    def __init__(self, runs):
        self.timed = [r for r in runs if r["rep"] != "w"]
        self.ok = [r for r in self.timed if r["ok"]]
        self.failed = [r for r in self.timed if not r["ok"]]

    def spread(self, key):
        vals = [r[key] for r in self.ok if r[key] is not None]
        return (min(vals), max(vals)) if vals else None

    def median(self, key):
        vals = [r[key] for r in self.ok if r[key] is not None]
        return statistics.median(vals) if vals else None

    @property
    def disturbed(self):
        """Successful timed runs during which the rest of the machine used more than a
        quarter of a CPU on average."""
        return sum(1 for r in self.ok
                   if r["other_cpu"] is not None and r["wall"]
                   and r["other_cpu"] > 0.25 * r["wall"])

    @property
    def peak_rss(self):
        vals = [r["rss_mib"] for r in self.ok]
        return max(vals) if vals else None

    @property
    def complete(self):
        return bool(self.timed) and not self.failed


def section(meta, rows, outputs):
    by = defaultdict(list)
    for r in rows:
        by[(r["case"], r["tool"])].append(r)
    summ = {k: Summary(v) for k, v in by.items()}
    cases = [c for c in "ab" if c in meta.get("cases", "").split()]
    reps = meta.get("reps", "?")
    sf = meta.get("sf", "1")
    mem_gib = int(meta.get("mem_kib", "0")) / 1024 / 1024
    problems = []  # correctness failures: make the script exit non-zero
    for c in cases:
        f, d = outputs.get((c, "ferry")), outputs.get((c, "duckdb"))
        if f and d and f["rows"] != d["rows"]:
            problems.append(f"({c}) ferry wrote {f['rows']:,} rows, DuckDB {d['rows']:,}")

    out = []
    w = out.append
    w(heading(sf))
    w("")
    w(f"Generated by `bench/tables` on {meta.get('date', '?')}; `bench/tables` replaces this "
      "section on every run and leaves the rest of the file alone.")
    w("")
    if problems:
        w("**The outputs differ, so the timings below compare different work:** "
          + "; ".join(problems) + ".")
        w("")
    w("### Machine, versions, data")
    w("")
    w(f"- Machine: {meta.get('nproc', '?')} CPUs ({meta.get('cpu', '?')}), "
      f"{mem_gib:.1f} GiB memory, {meta.get('os', '?')}, kernel {meta.get('kernel', '?')}, "
      f"file system {meta.get('fs', '?')}")
    for key, label in [
        ("ferry_version", "ferry"),
        ("ferry_binary", "ferry binary"),
        ("duckdb_version", "DuckDB"),
        ("tpchgen_version", "data generator"),
    ]:
        if key in meta:
            w(f"- {label}: {meta[key]}")
    if "loadavg_start" in meta:
        w(f"- Load average (1/5/15 min) before the run: {meta['loadavg_start']}; "
          f"after it: {meta.get('loadavg_end', '?')}")
    w(f"- Repetitions: {reps} timed run{'' if reps == '1' else 's'} per tool and case"
      + (", after one untimed warm-up run of each" if meta.get("warmup") == "1" else ""))
    data = []
    if "csv_bytes" in meta:
        data.append(f"`lineitem.csv` {human_bytes(int(meta['csv_bytes']))} "
                    f"(`{meta.get('gen_csv', '')}`: comma-separated, header line, "
                    "text with spaces quoted)")
    if "parquet_bytes" in meta:
        info = json.loads(meta["parquet_info"]) if meta.get("parquet_info") else {}
        extra = f", {info['rows']:,} rows" if "rows" in info else ""
        types = {}
        for name, typ in info.get("columns", []):
            types.setdefault(typ, []).append(name)
        shown = "; ".join(f"{typ}: {', '.join(names)}" for typ, names in types.items())
        data.append(f"`lineitem.parquet` {human_bytes(int(meta['parquet_bytes']))}{extra} "
                    f"(`{meta.get('gen_parquet', '')}`, the generator's defaults: snappy, "
                    f"7 MiB row groups; column types as DuckDB reads them: {shown})")
    if data:
        w(f"- Input, generated once outside the timed runs: {'; '.join(data)}")
    w("")

    w("### Method")
    w("")
    w("- (a) reads the CSV and writes Parquet. Both tools infer the column types from the "
      "CSV and write snappy-compressed Parquet (the default of both).")
    w("- (b) reads the Parquet file and writes Parquet, keeping rows with `l_quantity > 10`, "
      "replacing `l_comment` by its SHA-256 (lowercase hex), `l_shipmode` by `XXXXXXXXXX` and "
      "dropping `l_shipinstruct`; the other columns keep their order.")
    w("- Each run is one process tree timed by GNU `/usr/bin/time`: wall time, CPU "
      "(user + sys) and peak RSS. DuckDB runs through `bench/duckdb_copy.py`, so its numbers "
      "include starting Python and importing DuckDB (the *import* column); the *DuckDB "
      "in-process* column is the time from `duckdb.connect()` to the end of the `COPY` "
      "statement, measured inside that script. DuckDB uses its defaults: one thread per "
      "CPU, memory limit 80 % of RAM. ferry uses its defaults too.")
    w("- ferry runs with `--no-resume` and a fresh `--state-dir` per run. Every run writes "
      "to a new directory, which is deleted afterwards, followed by `sync` and a "
      f"{meta.get('settle', '?')} s pause outside the timed section. Inputs stay in the page "
      "cache (caches are not dropped); outputs are not flushed to disk by either tool.")
    w("- Tools alternate within each repetition and their order rotates between "
      "repetitions. Tables show medians over the successful timed runs; the RSS column is "
      "the maximum over them.")
    w("- *Other CPU* is the CPU time the rest of the machine used during a run "
      "(whole-machine busy time from `/proc/stat` minus the measured process tree, floored "
      "at 0). Large values mean the run shared the CPUs with other work; *Disturbed* counts "
      "the runs in which that was more than a quarter of a CPU on average.")
    w("- Every output is read back with DuckDB (`SELECT count(*)`, `DESCRIBE`); the row "
      "counts of ferry and DuckDB must be equal, otherwise `bench/tables` fails.")
    timed = [x for x in summ.values()]
    n_timed = sum(len(x.ok) for x in timed)
    n_disturbed = sum(x.disturbed for x in timed)
    if n_disturbed:
        w(f"- **Noise:** {n_disturbed} of {n_timed} successful timed runs shared the CPUs with "
          "other work (*Disturbed* column); their wall times are inflated, so compare the "
          "medians with care and look at the CPU columns and the spread of the wall times.")
    else:
        w(f"- No timed run shared the CPUs with other work to a notable degree (*Other CPU* "
          f"stayed under a quarter of a CPU in all {n_timed}; the load average before the "
          f"run was {meta.get('loadavg_start', '?')}).")
    w("")

    w("### Results")
    w("")
    w("| Case | Tool | Runs ok | Wall s (median) | Wall s (min–max) | CPU s (median) | "
      "Peak RSS MiB | DuckDB import s | DuckDB in-process s | Other CPU s | Disturbed | "
      "Output rows | Output MiB |")
    w("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in cases:
        for t in TOOLS:
            s = summ.get((c, t))
            if s is None:
                continue
            o = outputs.get((c, t), {})
            nrows = f"{o['rows']:,}" if "rows" in o else "–"
            out_mib = s.median("out_mib")
            sp = s.spread("wall")
            sp = f"{sp[0]:.2f}–{sp[1]:.2f}" if sp else "–"
            duck = t == "duckdb"
            w(f"| ({c}) {CASE_DESC[c]} | {t} | {len(s.ok)}/{len(s.timed)} | "
              f"{fmt(s.median('wall'))} | {sp} | {fmt(s.median('cpu'))} | "
              f"{fmt(s.peak_rss, 1)} | {fmt(s.median('import')) if duck else '–'} | "
              f"{fmt(s.median('inproc')) if duck else '–'} | "
              f"{fmt(s.median('other_cpu'))} | {s.disturbed}/{len(s.ok)} | {nrows} | "
              f"{fmt(out_mib, 1)} |")
    w("")

    w("### Targets")
    w("")
    w("Ratios are ferry's median divided by DuckDB's (below 1 means ferry is faster or "
      "leaner). The target compares whole-process wall times; the in-process ratio (ferry's "
      "whole run against DuckDB's `COPY` alone) is shown for information.")
    w("")
    w("| Case | Comparison | Ratio | Target | Met? |")
    w("| --- | --- | ---: | --- | --- |")
    misses = []
    for c in cases:
        fs, ds = summ.get((c, "ferry")), summ.get((c, "duckdb"))
        target = f"ferry wall ≤ {WALL_LIMIT:.2f} × DuckDB"
        if fs is None or ds is None:
            w(f"| ({c}) | wall ferry / DuckDB | – | {target} | not measured |")
            misses.append(f"({c}) wall time: not measured")
            continue
        fw, dw = fs.median("wall"), ds.median("wall")
        ratio = fw / dw if fw and dw else None
        if not fs.complete:
            met = f"**no** (ferry failed {len(fs.failed)} of {len(fs.timed)} runs)"
        elif not ds.complete or ratio is None:
            met = "unknown (DuckDB failed)"
        elif ratio <= WALL_LIMIT:
            met = "yes"
        else:
            met = "**no**"
        if met != "yes":
            misses.append(f"({c}) wall ratio {fmt(ratio)} (target ≤ {WALL_LIMIT:.2f}) – "
                          f"{met.replace('**', '')}")
        w(f"| ({c}) | wall ferry / DuckDB | {fmt(ratio)} | {target} | {met} |")
        fc, dc = fs.median("cpu"), ds.median("cpu")
        w(f"| ({c}) | CPU ferry / DuckDB | {fmt(fc / dc if fc and dc else None)} | "
          "none (for information) | – |")
        di = ds.median("inproc")
        w(f"| ({c}) | wall ferry / DuckDB in-process | {fmt(fw / di if fw and di else None)} | "
          "none (for information) | – |")
    for c in cases:
        fs = summ.get((c, "ferry"))
        target = f"ferry peak RSS ≤ {RSS_LIMIT_MIB:.0f} MiB"
        if fs is None or not fs.ok:
            why = "not measured" if fs is None else "not measured (no successful ferry run)"
            w(f"| ({c}) | ferry peak RSS | – | {target} | {why} |")
            misses.append(f"({c}) ferry peak RSS: {why}")
            continue
        peak = fs.peak_rss
        met = "yes" if peak <= RSS_LIMIT_MIB else "**no**"
        if met != "yes":
            misses.append(f"({c}) ferry peak RSS {peak:.1f} MiB (target ≤ {RSS_LIMIT_MIB:.0f})")
        w(f"| ({c}) | ferry peak RSS | {peak:.1f} MiB | {target} | {met} |")
    w("")
    if misses:
        w("Targets missed or not measured in this run:")
        w("")
        for m in misses:
            w(f"- {m}")
    else:
        w("All targets were met in this run.")
    w("")

    w("### Correctness")
    w("")
    w("| Case | ferry rows | DuckDB rows | Equal? | Columns |")
    w("| --- | ---: | ---: | --- | --- |")
    for c in cases:
        f, d = outputs.get((c, "ferry")), outputs.get((c, "duckdb"))
        fr = f"{f['rows']:,}" if f else "–"
        dr = f"{d['rows']:,}" if d else "–"
        if f and d:
            equal = "yes" if f["rows"] == d["rows"] else "**no**"
            fnames = [x[0] for x in f["columns"]]
            dnames = [x[0] for x in d["columns"]]
            if fnames != dnames:
                cols = (f"names or order differ: ferry {', '.join(fnames)}; "
                        f"DuckDB {', '.join(dnames)}")
            else:
                diff = [f"`{a[0]}` {a[1]} vs {b[1]}" for a, b in zip(f["columns"], d["columns"])
                        if a[1] != b[1]]
                cols = f"same {len(fnames)} names in the same order"
                cols += ("; types as read by DuckDB differ (ferry vs DuckDB): " + ", ".join(diff)
                         if diff else ", same types")
        else:
            equal = "not compared (a tool produced no output)"
            cols = "–"
        w(f"| ({c}) | {fr} | {dr} | {equal} | {cols} |")
    w("")

    failures = [r for r in rows if not r["ok"]]
    if failures:
        w("### Failed runs")
        w("")
        w("| Case | Tool | Run | Status |")
        w("| --- | --- | --- | --- |")
        for r in failures:
            run = "warm-up" if r["rep"] == "w" else r["rep"]
            w(f"| ({r['case']}) | {r['tool']} | {run} | {r['status'].replace('|', ' ')} |")
        w("")

    w("### Commands")
    w("")
    w("`$BENCH_DATA_DIR` is `bench/.data`, `$RUN` the directory of one run "
      "(`bench/.data/runs/<time>`), `TOOL-REP` the tool and run number. `python` is the "
      "virtualenv's `bench/.tools/venv/bin/python`.")
    w("")
    w("```")
    for c in cases:
        for t in TOOLS:
            if (c, t) in summ and f"cmd_{c}_{t}" in meta:
                w(f"({c}) {meta[f'cmd_{c}_{t}']}")
    w("```")
    w("")

    w("### All runs")
    w("")
    w("| Case | Tool | Run | Wall s | User s | Sys s | Max RSS MiB | DuckDB in-process s | "
      "Other CPU s | Rows | Status |")
    w("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        run = "warm-up" if r["rep"] == "w" else r["rep"]
        nrows = f"{r['rows']:,}" if r["rows"] is not None else "–"
        status = r["status"] if r["ok"] else "failed (see above)" if r["status"].startswith(
            "failed") else r["status"]
        w(f"| ({r['case']}) | {r['tool']} | {run} | {fmt(r['wall'])} | {fmt(r['user'])} | "
          f"{fmt(r['sys'])} | {fmt(r['rss_mib'], 1)} | "
          f"{fmt(r['inproc']) if r['tool'] == 'duckdb' else '–'} | {fmt(r['other_cpu'])} | "
          f"{nrows} | {status.replace('|', ' ')} |")
    w("")
    return out, problems


def splice(text, head, new_lines):
    """Replace the section starting at the line `head` (up to the next level-1 or level-2
    heading outside code fences) with new_lines, or append it."""
    lines = text.split("\n") if text else []
    start = next((i for i, line in enumerate(lines) if line.rstrip() == head), None)
    if start is None:
        while lines and lines[-1].strip() == "":
            lines.pop()
        if lines:
            lines.append("")
        return "\n".join(lines + new_lines)
    end, fence = len(lines), False
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("```"):
            fence = not fence
        elif not fence and (lines[i].startswith("# ") or lines[i].startswith("## ")):
            end = i
            break
    tail = lines[end:]
    return "\n".join(lines[:start] + new_lines + ([""] + tail if tail else []))


def main():
    meta_path, results_path, outputs_path, out_path = sys.argv[1:5]
    meta = read_meta(meta_path)
    rows = read_results(results_path)
    outputs = read_outputs(outputs_path)
    new, problems = section(meta, rows, outputs)
    while new and new[-1] == "":
        new.pop()
    text = ""
    if os.path.exists(out_path):
        with open(out_path, encoding="utf-8") as f:
            text = f.read()
    result = splice(text, heading(meta.get("sf", "1")), new)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(result.rstrip("\n") + "\n")
    for p in problems:
        print(f"tables_report: {p}", file=sys.stderr)
    return 3 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
