#!/usr/bin/env python3
"""Run one DuckDB statement the way bench/tables times it.

usage: duckdb_copy.py SQL

The timed region of bench/tables is this whole process: starting Python, importing
duckdb, connecting to an in-memory database and running SQL. The last line printed on
stdout is a JSON object with the in-process part of that time:

  import_s  seconds spent in `import duckdb`
  query_s   seconds from duckdb.connect() until the statement has finished
            (for a COPY ... TO that includes writing and closing the output file)

DuckDB runs with its defaults (threads = number of CPUs, memory_limit = 80 % of RAM).
"""

import json
import sys
import time

t0 = time.perf_counter()
import duckdb  # noqa: E402  (the import is part of what is measured)

t1 = time.perf_counter()
con = duckdb.connect()
con.execute(sys.argv[1])
con.close()
t2 = time.perf_counter()
print(json.dumps({"import_s": round(t1 - t0, 4), "query_s": round(t2 - t1, 4)}))
