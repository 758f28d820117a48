#!/usr/bin/env python3
"""Turn the raw measurements of bench/postgres into one section of docs/benchmarks.md.

usage: postgres_report.py META RESULTS OUTPUTS OUT

META     key=value lines written by bench/postgres (machine, versions, commands, and
         source_info: the row count, column types and aggregates of the source table)
RESULTS  tab-separated rows: case tool rep status wall user sys maxrss_kib machine_cpu
         server_cpu rows bytes cx_import_s cx_read_s cx_write_s wal_bytes ("-" where not
         known; bytes is the Parquet file's size in (a), the loaded table's
         pg_total_relation_size in (b) and (c); wal_bytes, the WAL the server wrote during
         the run, only in (b) and (c). Rows of 15 columns, from before wal_bytes was
         recorded, are read as having none)
OUTPUTS  tab-separated rows: case tool JSON ({"rows", "bytes", "columns", "agg"} of the
         first successful output of that tool and case; aggregates as in bench/postgres)
OUT      markdown file; only the section under the heading (one per server: the given
         server, or the stock one bench/postgres makes) is replaced (or appended), the
         rest of the file is left as it is

Exit status: 0, or 3 when an output's row count or aggregates differ from the source
table's.
"""

import json
import sys
from collections import defaultdict

import benchlib
from benchlib import Summary, fmt, human_bytes, num, read_meta, read_outputs, run_status

RSS_LIMIT_MIB = 256.0
# (case, peer, ferry wall at most this times the peer's, what the peer is)
WALL_TARGETS = [
    ("a", "connectorx", 0.5, "ConnectorX"),
    ("a", "connectorx-p2", 0.5, "ConnectorX, 2 partitions"),
    ("a", "psql", 1.5, "the floor (psql binary COPY to /dev/null)"),
    ("b", "psql", 0.8, "psql \\copy from CSV"),
    ("c", "psql", 0.5, "psql \\copy from CSV"),
]
CASE_TOOLS = {
    "a": ["ferry", "connectorx", "connectorx-p2", "psql"],
    "b": ["ferry", "psql"],
    "c": ["ferry", "psql"],
}
CASE_DESC = {
    "a": "PostgreSQL → Parquet",
    "b": "Parquet → PostgreSQL (new table)",
    "c": "Parquet → PostgreSQL (existing empty table)",
}
# the cases that write into the database (their WAL is measured)
LOAD_CASES = ["b", "c"]
TOOL_DESC = {
    ("a", "ferry"): "ferry",
    ("a", "connectorx"): "ConnectorX + pyarrow",
    ("a", "connectorx-p2"): "ConnectorX (2 partitions) + pyarrow",
    ("a", "psql"): "floor: psql binary COPY → /dev/null",
    ("b", "ferry"): "ferry (from Parquet)",
    ("b", "psql"): "psql \\copy (from CSV)",
    ("c", "ferry"): "ferry (from Parquet, mode=append)",
    ("c", "psql"): "psql \\copy (from CSV)",
}
AGG_KEYS = [
    ("rows", "rows"),
    ("sum_l_extendedprice", "sum(l_extendedprice)"),
    ("sum_l_quantity", "sum(l_quantity)"),
    ("sum_l_discount", "sum(l_discount)"),
    ("sum_l_tax", "sum(l_tax)"),
    ("sum_l_orderkey", "sum(l_orderkey)"),
    ("sum_l_linenumber", "sum(l_linenumber)"),
    ("min_l_shipdate", "min(l_shipdate)"),
    ("max_l_receiptdate", "max(l_receiptdate)"),
    ("sum_len_l_comment", "sum(length(l_comment))"),
    ("distinct_l_comment", "count(distinct l_comment)"),
    ("distinct_l_shipmode", "count(distinct l_shipmode)"),
]


def heading(sf, server="given"):
    if server == "stock":
        return f"## PostgreSQL on a stock server: TPC-H lineitem SF{sf}"
    return f"## PostgreSQL: TPC-H lineitem SF{sf}"


def read_results(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 15:
                parts.append("-")  # written before the WAL was measured
            if len(parts) != 16:
                continue
            (case, tool, rep, status, wall, user, sys_, rss, mcpu, scpu, nrows, nbytes,
             cx_import, cx_read, cx_write, wal) = parts
            wal_bytes = int(wal) if wal.lstrip("-").isdigit() else None
            out_bytes = int(nbytes) if nbytes.isdigit() else None
            cpu = (num(user) or 0.0) + (num(sys_) or 0.0)
            machine, server = num(mcpu), num(scpu)
            other = None
            if machine is not None:
                other = max(0.0, machine - cpu - (server or 0.0))
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
                "server": server,
                "total_cpu": cpu + server if server is not None else None,
                "rss_mib": (num(rss) or 0.0) / 1024.0,
                "other_cpu": other,
                "rows": int(nrows) if nrows.isdigit() else None,
                "out_mib": out_bytes / 1048576 if out_bytes is not None else None,
                "cx_import": num(cx_import),
                "cx_read": num(cx_read),
                "cx_write": num(cx_write),
                "wal_mib": wal_bytes / 1048576 if wal_bytes is not None else None,
                # WAL bytes per byte of the loaded table (pg_total_relation_size)
                "wal_per_byte": (wal_bytes / out_bytes
                                 if wal_bytes is not None and out_bytes else None),
            })
    return rows


def agg_diff(agg, ref):
    """Names of the aggregates in which agg differs from ref."""
    return [label for key, label in AGG_KEYS
            if key in ref and str(agg.get(key)) != str(ref.get(key))]


def section(meta, rows, outputs):
    by = defaultdict(list)
    for r in rows:
        by[(r["case"], r["tool"])].append(r)
    summ = {k: Summary(v) for k, v in by.items()}
    cases = [c for c in "abc" if c in meta.get("cases", "").split()]
    reps = meta.get("reps", "?")
    sf = meta.get("sf", "1")
    server = meta.get("pg_server", "given")
    stock = server == "stock"
    mem_gib = int(meta.get("mem_kib", "0")) / 1024 / 1024
    source = json.loads(meta["source_info"]) if meta.get("source_info") else {}
    ref = source.get("agg", {})

    problems = []  # correctness failures: make the script exit non-zero
    for (c, t), o in sorted(outputs.items()):
        diff = agg_diff(o.get("agg", {}), ref)
        if diff:
            problems.append(f"({c}) {t}: {', '.join(diff)} differ from the source table")
    for c in cases:
        f = outputs.get((c, "ferry"))
        for t in CASE_TOOLS[c][1:]:
            o = outputs.get((c, t))
            if f and o:
                diff = agg_diff(f.get("agg", {}), o.get("agg", {}))
                if diff:
                    problems.append(f"({c}) ferry and {t} differ in {', '.join(diff)}")

    out = []
    w = out.append
    w(heading(sf, server))
    w("")
    w(f"Generated by `bench/postgres` on {meta.get('date', '?')}; `bench/postgres` replaces "
      "this section on every run and leaves the rest of the file alone.")
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
    w(f"- PostgreSQL: {meta.get('pg_version', '?')}, on the same machine"
      if meta.get("pg_local") == "yes" else
      f"- PostgreSQL: {meta.get('pg_version', '?')}")
    if stock:
        w(f"- Server: a throwaway cluster `bench/postgres` made with `initdb` for this run "
          f"and deleted afterwards, on 127.0.0.1:{meta.get('pg_stock_port', '?')}, with "
          "initdb's and PostgreSQL's defaults: nothing traded for speed (`fsync`, "
          "`synchronous_commit` and `full_page_writes` on), only where it listens set "
          "(see Commands). Its data directory is on the same file system as the data.")
        if meta.get("pg_settings"):
            w(f"- Server settings: {meta['pg_settings']} – the same server and settings for "
              "every tool; loads wait for the disk as they would on a production server.")
        if meta.get("pg_stock_changed"):
            w(f"- Settings that differ from PostgreSQL's built-in defaults (and where they "
              f"come from): {meta['pg_stock_changed']}")
    elif meta.get("pg_settings"):
        w(f"- Server settings: {meta['pg_settings']}. This is the test server of "
          "`scripts/services`, which runs with `fsync = off`, `synchronous_commit = off` and "
          "`full_page_writes = off` (durability traded for speed) – the same server and "
          "settings for every tool, so loads never wait for the disk. The section "
          "\"PostgreSQL on a stock server\" (`BENCH_PG_SERVER=stock`) measures the same on "
          "a server with initdb's defaults.")
    for key, label in [
        ("psql_version", "psql"),
        ("ferry_version", "ferry"),
        ("ferry_binary", "ferry binary"),
    ]:
        if key in meta:
            w(f"- {label}: {meta[key]}")
    if "connectorx_version" in meta:
        w(f"- ConnectorX {meta['connectorx_version']}, pyarrow {meta.get('pyarrow_version', '?')} "
          f"({meta.get('python_version', '?')}), installed with pip into `bench/.tools/venv`")
    if "tpchgen_version" in meta:
        w(f"- Data generator: {meta['tpchgen_version']}")
    if "loadavg_start" in meta:
        w(f"- Load average (1/5/15 min) before the run: {meta['loadavg_start']}; "
          f"after it: {meta.get('loadavg_end', '?')}")
    w(f"- Repetitions: {reps} timed run{'' if reps == '1' else 's'} per tool and case"
      + (", after one untimed warm-up run of each" if meta.get("warmup") == "1" else ""))
    data = []
    if source:
        size = (f", {human_bytes(int(meta['source_table_bytes']))} on disk"
                if meta.get("source_table_bytes", "").isdigit() else "")
        types = {}
        for name, typ in source.get("columns", []):
            types.setdefault(typ, []).append(name)
        shown = "; ".join(f"{typ}: {', '.join(names)}" for typ, names in types.items())
        data.append(f"table `lineitem` with {source.get('rows', 0):,} rows{size} "
                    f"({shown}), loaded once from `lineitem.csv` with `psql \\copy` and "
                    "`VACUUM ANALYZE`d (see Commands)")
    if "csv_bytes" in meta:
        data.append(f"`lineitem.csv` {human_bytes(int(meta['csv_bytes']))} "
                    f"(`{meta.get('gen_csv', '')}`: comma-separated, header line, "
                    "text with spaces quoted)")
    if "parquet_bytes" in meta:
        info = json.loads(meta["parquet_info"]) if meta.get("parquet_info") else {}
        extra = f", {info['rows']:,} rows" if "rows" in info else ""
        data.append(f"`lineitem.parquet` {human_bytes(int(meta['parquet_bytes']))}{extra} "
                    f"(`{meta.get('gen_parquet', '')}`: snappy, int64/int32/decimal128(15,2)/"
                    "date32/string_view columns, all required)")
    if data:
        w(f"- Input, prepared once outside the timed runs: {'; '.join(data)}")
    w("")

    w("### Method")
    w("")
    w("- (a) reads the whole table `lineitem` and writes one Parquet file. ferry reads the "
      "table in parallel page-range (ctid) partitions of one snapshot over binary `COPY` "
      f"(one connection per CPU, at most `--transfers`: {meta.get('nproc', '?')} here) and "
      "writes Parquet with its defaults. ConnectorX reads with `cx.read_sql(url, "
      "\"SELECT * FROM lineitem\", return_type=\"arrow\")` (its default binary protocol; one "
      "connection, or with `partition_on=\"l_orderkey\", partition_num=2` two range queries "
      "in parallel – `lineitem` has no index, so each of them scans the whole table), "
      "holds the whole result as one Arrow table and writes it with "
      "`pyarrow.parquet.write_table(..., compression=\"snappy\")` "
      "(`bench/connectorx_copy.py`). The floor is the server's binary `COPY` of the table "
      "streamed by `psql` to `/dev/null`: no decoding, no file – the least a client reading "
      "over one connection can take. It is bound by one backend's CPU, so a client that "
      "reads over several connections (ferry) can come close to it or beat it when the "
      "machine has a spare core.")
    w("- (b) loads `lineitem.parquet` into a new table. ferry creates `lineitem_ferry` from "
      "the Parquet file's Arrow schema (staging table filled by parallel binary `COPY`, "
      "renamed at the end; mode overwrite). The peer is `psql \\copy lineitem_psql FROM "
      "'lineitem.csv' CSV HEADER` into an empty table created beforehand `LIKE lineitem` "
      "(same column types) – PostgreSQL's own bulk load path, from the CSV of the same data. "
      "Both target tables are dropped before every run and the empty `lineitem_psql` is "
      "created then, outside the timed section.")
    w("- (c) loads `lineitem.parquet` into an existing empty table: before every run, "
      "outside the timed section, the tool's target (`lineitem_ferry` or `lineitem_psql`) "
      "is dropped and created again `LIKE lineitem`. ferry runs with `mode=append`: since "
      "the table exists, it fills an unlogged staging table by parallel binary `COPY` and "
      "then moves the rows with `INSERT INTO lineitem_ferry SELECT … FROM` the staging "
      "table and drops it, in one transaction (all rows or none). psql runs the same "
      "`\\copy lineitem_psql FROM 'lineitem.csv' CSV HEADER` as in (b).")
    if any(c in cases for c in LOAD_CASES):
        w("- *WAL* is the write-ahead log the server generated during a run of (b) or (c): "
          "`pg_wal_lsn_diff` of `pg_current_wal_insert_lsn()` read right before the run and "
          "again once its sessions have ended (both untimed; the insert position rather "
          "than `pg_current_wal_lsn()`, the write position, which can lag behind by what "
          "still sits in the WAL buffers). It counts the whole cluster"
          + (", which nothing else uses here." if stock else
             ": on the shared test server, other databases' writes during the run count "
             "too.")
          + " *WAL per loaded byte* divides it by the loaded table's "
          "`pg_total_relation_size` (heap, TOAST, free space and visibility maps; no "
          "indexes), read after the run; that size is also the (b)/(c) *Output MiB*.")
    w("- Each run is one process tree timed by GNU `/usr/bin/time` (wall time, CPU user + "
      "sys, peak RSS = the largest resident set of the process tree). ConnectorX's numbers "
      "include starting Python and importing connectorx and pyarrow. *Server CPU* is the "
      "CPU time of the PostgreSQL server during the run (its postmaster and children from "
      "`/proc`, including the backends reaped after they exit; read once the run's sessions "
      "have ended), so *Total CPU* = client + server.")
    w("- ferry runs with `--no-resume` and a fresh `--state-dir` per run. Before every run, "
      "outside the timed section: fresh output and state directories, the (b) and (c) "
      "tables dropped (and the empty targets created as described), "
      f"`CHECKPOINT`, `sync` and a {meta.get('settle', '?')} s pause. The table "
      "`lineitem` and the input files stay in the page cache (caches are not dropped); the "
      "Parquet outputs of (a) are not flushed to disk by any tool.")
    w("- Tools alternate within each repetition and their order rotates between "
      "repetitions. Tables show medians over the successful timed runs; the RSS columns are "
      "the maximum over them.")
    w("- *Other CPU* is the CPU time the rest of the machine used during a run "
      "(whole-machine busy time from `/proc/stat` minus the tool and the server, floored at "
      "0). Large values mean the run shared the CPUs with other work; *Disturbed* counts the "
      "runs in which that was more than a quarter of a CPU on average.")
    w("- Correctness: every output's row count is checked after every run (Parquet footer "
      "via pyarrow; `count(*)` for tables). The first successful output of every tool and "
      "case is also aggregated (sums of every numeric column, min/max dates, total length "
      "and distinct count of `l_comment`, distinct `l_shipmode`; Parquet with pyarrow, "
      "tables with SQL) and compared with the same aggregates of the source table "
      "`lineitem`; any difference makes `bench/postgres` fail.")
    timed = list(summ.values())
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
      "Server CPU s | Total CPU s | Peak RSS MiB | Other CPU s | Disturbed | Output rows | "
      "Output MiB |")
    w("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in cases:
        for t in CASE_TOOLS[c]:
            s = summ.get((c, t))
            if s is None:
                continue
            o = outputs.get((c, t), {})
            nrows = f"{o['rows']:,}" if "rows" in o else "–"
            sp = s.spread("wall")
            sp = f"{sp[0]:.2f}–{sp[1]:.2f}" if sp else "–"
            w(f"| ({c}) {CASE_DESC[c]} | {TOOL_DESC[(c, t)]} | {len(s.ok)}/{len(s.timed)} | "
              f"{fmt(s.median('wall'))} | {sp} | {fmt(s.median('cpu'))} | "
              f"{fmt(s.median('server'))} | {fmt(s.median('total_cpu'))} | "
              f"{fmt(s.peak_rss, 1)} | {fmt(s.median('other_cpu'))} | "
              f"{s.disturbed}/{len(s.ok)} | {nrows} | {fmt(s.median('out_mib'), 1)} |")
    w("")
    if any(c in cases for c in LOAD_CASES):
        w("*Output MiB* is the Parquet file in (a) and the loaded table's "
          "`pg_total_relation_size` in (b) and (c).")
        w("")
    loads = [(c, t) for c in cases if c in LOAD_CASES for t in CASE_TOOLS[c] if (c, t) in summ]
    if loads:
        w("WAL the server wrote per run (medians over the successful timed runs):")
        w("")
        w("| Case | Tool | WAL MiB | Table MiB | WAL bytes per loaded byte |")
        w("| --- | --- | ---: | ---: | ---: |")
        for c, t in loads:
            s = summ[(c, t)]
            w(f"| ({c}) {CASE_DESC[c]} | {TOOL_DESC[(c, t)]} | {fmt(s.median('wal_mib'), 1)} | "
              f"{fmt(s.median('out_mib'), 1)} | {fmt(s.median('wal_per_byte'))} |")
        w("")
    cx = [(c, t) for c in cases for t in ("connectorx", "connectorx-p2") if (c, t) in summ]
    if cx:
        w("Where ConnectorX's time goes (medians, measured inside `bench/connectorx_copy.py`):")
        w("")
        w("| Tool | Python imports s | `cx.read_sql` s | `pq.write_table` s |")
        w("| --- | ---: | ---: | ---: |")
        for c, t in cx:
            s = summ[(c, t)]
            w(f"| {TOOL_DESC[(c, t)]} | {fmt(s.median('cx_import'))} | "
              f"{fmt(s.median('cx_read'))} | {fmt(s.median('cx_write'))} |")
        w("")

    w("### Targets")
    w("")
    w("Ratios are ferry's median divided by the peer's (below 1 means ferry is faster or "
      "uses less). The targets compare whole-process wall times and ferry's peak RSS; the "
      "CPU ratios (client + server) are for information.")
    w("")
    w("| Case | Comparison | Ratio | Target | Met? |")
    w("| --- | --- | ---: | --- | --- |")
    misses = []
    for c, peer, limit, desc in WALL_TARGETS:
        if c not in cases:
            continue
        fs, ps = summ.get((c, "ferry")), summ.get((c, peer))
        target = f"ferry wall ≤ {limit:.2f} × {desc}"
        label = f"wall ferry / {TOOL_DESC[(c, peer)]}"
        if fs is None or ps is None:
            w(f"| ({c}) | {label} | – | {target} | not measured |")
            misses.append(f"({c}) ferry / {peer} wall time: not measured")
            continue
        fw, pw = fs.median("wall"), ps.median("wall")
        ratio = fw / pw if fw and pw else None
        if not fs.complete:
            met = f"**no** (ferry failed {len(fs.failed)} of {len(fs.timed)} runs)"
        elif not ps.complete or ratio is None:
            met = f"unknown ({peer} failed)"
        elif ratio <= limit:
            met = "yes"
        else:
            met = "**no**"
        if met != "yes":
            misses.append(f"({c}) wall ferry / {peer} {fmt(ratio)} (target ≤ {limit:.2f}) – "
                          f"{met.replace('**', '')}")
        w(f"| ({c}) | {label} | {fmt(ratio)} | {target} | {met} |")
        ft, pt = fs.median("total_cpu"), ps.median("total_cpu")
        w(f"| ({c}) | total CPU ferry / {TOOL_DESC[(c, peer)]} | "
          f"{fmt(ft / pt if ft and pt else None)} | none (for information) | – |")
        fr, pr = fs.peak_rss, ps.peak_rss
        w(f"| ({c}) | peak RSS ferry / {TOOL_DESC[(c, peer)]} | "
          f"{fmt(fr / pr if fr and pr else None)} | none (for information) | – |")
        if c in LOAD_CASES:
            fwal, pwal = fs.median("wal_mib"), ps.median("wal_mib")
            w(f"| ({c}) | WAL ferry / {TOOL_DESC[(c, peer)]} | "
              f"{fmt(fwal / pwal if fwal and pwal else None)} | none (for information) | – |")
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
    w("Aggregates of the first successful output of each tool, compared with the source "
      "table `lineitem` (the floor of (a) writes nothing to compare).")
    w("")
    w("| Case | Tool | Rows | sum(l_extendedprice) | sum(l_quantity) | "
      "count(distinct l_comment) | Same aggregates as the source? | Column types |")
    w("| --- | --- | ---: | ---: | ---: | ---: | --- | --- |")
    if ref:
        w(f"| source | table `lineitem` | {ref.get('rows', 0):,} | "
          f"{ref.get('sum_l_extendedprice', '–')} | {ref.get('sum_l_quantity', '–')} | "
          f"{ref.get('distinct_l_comment', 0):,} | – | "
          f"{', '.join(f'{n} {t}' for n, t in source.get('columns', []))} |")
    for c in cases:
        for t in CASE_TOOLS[c]:
            if (c, t) not in summ or (c == "a" and t == "psql"):
                continue
            o = outputs.get((c, t))
            if not o:
                w(f"| ({c}) | {TOOL_DESC[(c, t)]} | – | – | – | – | not compared (no "
                  "successful output) | – |")
                continue
            a = o.get("agg", {})
            diff = agg_diff(a, ref) if ref else None
            same = ("not compared" if diff is None else
                    f"yes, all {len(AGG_KEYS)}" if not diff else f"**no**: {', '.join(diff)}")
            cols = ", ".join(f"{n} {typ}" for n, typ in o.get("columns", []))
            w(f"| ({c}) | {TOOL_DESC[(c, t)]} | {o.get('rows', 0):,} | "
              f"{a.get('sum_l_extendedprice', '–')} | {a.get('sum_l_quantity', '–')} | "
              f"{a.get('distinct_l_comment', 0):,} | {same} | {cols} |")
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
      "(`bench/.data/runs/pg-<time>`), `TOOL-REP` the tool and run number. `python` is the "
      "virtualenv's `bench/.tools/venv/bin/python`. "
      + ("The stock cluster's superuser `ferry` gets the password of `PGPASSWORD` (`ferry` "
         "when it is not set); as root, `initdb` and `pg_ctl` run as the `postgres` user."
         if stock else
         "The password comes from `PGPASSWORD` (`eval \"$(scripts/services env)\"`)."))
    w("")
    w("```")
    if stock and "pg_stock_initdb" in meta:
        w("# once: the stock server (stopped with pg_ctl stop -m fast and deleted at the end)")
        w(meta["pg_stock_initdb"])
        w(meta.get("pg_stock_start", ""))
        w(f"psql -d postgres://ferry@127.0.0.1:{meta.get('pg_stock_port', '?')}/postgres "
          "-c \"CREATE DATABASE ferry\"")
    if "load_ddl" in meta:
        w("# once: load the source table")
        w(f"psql -d {meta.get('pg_url', '')} -c \"{meta['load_ddl']}\"")
        w(f"psql -d {meta.get('pg_url', '')} -c \"{meta.get('load_copy', '')}\"")
        w(f"psql -d {meta.get('pg_url', '')} -c \"{meta.get('load_vacuum', '')}\"")
    for c in cases:
        w(f"# ({c}) {CASE_DESC[c]}")
        if c == "b":
            w("# before each run: DROP TABLE IF EXISTS lineitem_ferry, lineitem_psql; and "
              "for psql: CREATE TABLE lineitem_psql (LIKE lineitem)")
        if c == "c":
            w("# before each run: DROP TABLE IF EXISTS lineitem_ferry, lineitem_psql; "
              "CREATE TABLE lineitem_ferry (LIKE lineitem) for ferry, "
              "CREATE TABLE lineitem_psql (LIKE lineitem) for psql")
        if c in LOAD_CASES:
            w("# around each run (untimed): SELECT pg_current_wal_insert_lsn(); before, "
              "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '<before>'); after")
        for t in CASE_TOOLS[c]:
            if (c, t) in summ and f"cmd_{c}_{t}" in meta:
                w(meta[f"cmd_{c}_{t}"])
    w("```")
    w("")

    w("### All runs")
    w("")
    w("| Case | Tool | Run | Wall s | User s | Sys s | Server CPU s | Max RSS MiB | "
      "Other CPU s | Rows | WAL MiB | Status |")
    w("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        run = "warm-up" if r["rep"] == "w" else r["rep"]
        nrows = f"{r['rows']:,}" if r["rows"] is not None else "–"
        status = run_status(r)
        w(f"| ({r['case']}) | {r['tool']} | {run} | {fmt(r['wall'])} | {fmt(r['user'])} | "
          f"{fmt(r['sys'])} | {fmt(r['server'])} | {fmt(r['rss_mib'], 1)} | "
          f"{fmt(r['other_cpu'])} | {nrows} | {fmt(r['wal_mib'], 1)} | {status} |")
    w("")
    return out, problems


def main():
    """META RESULTS OUTPUTS OUT, as benchlib.main, with a heading per server."""
    meta_path, results_path, outputs_path, out_path = sys.argv[1:5]
    meta = read_meta(meta_path)
    new, problems = section(meta, read_results(results_path), read_outputs(outputs_path))
    head = heading(meta.get("sf", "1"), meta.get("pg_server", "given"))
    return benchlib.write_section("postgres_report", out_path, head, new, problems)


if __name__ == "__main__":
    sys.exit(main())
