#!/usr/bin/env python3
"""Copy a PostgreSQL query result to a Parquet file with ConnectorX, the way bench/postgres
times it.

usage: connectorx_copy.py URL SQL OUT.parquet [--partition-on COLUMN --partition-num N]

The timed region of bench/postgres is this whole process: starting Python, importing
connectorx and pyarrow, `cx.read_sql(..., return_type="arrow")` (the whole result as one
Arrow table in memory) and `pyarrow.parquet.write_table(..., compression="snappy")`.

URL is a postgres:// or postgresql:// URL; when it carries no password, the one in
PGPASSWORD is put into it (ConnectorX does not read the PG* environment variables), so the
password never shows on the command line.

The last line printed on stdout is a JSON object with the in-process part of the time:

  import_s  seconds spent importing connectorx, pyarrow and pyarrow.parquet
  read_s    seconds in cx.read_sql (query, transfer, building the Arrow table)
  write_s   seconds in pq.write_table (encoding, compressing, writing and closing the file)
  rows      rows of the Arrow table
"""

import argparse
import json
import os
import sys
import time
from urllib.parse import quote, urlsplit, urlunsplit

t0 = time.perf_counter()
import connectorx as cx  # noqa: E402  (the imports are part of what is measured)
import pyarrow.parquet as pq  # noqa: E402

t1 = time.perf_counter()


def with_password(url):
    parts = urlsplit(url)
    scheme = "postgresql" if parts.scheme in ("postgres", "postgresql") else parts.scheme
    netloc = parts.netloc
    password = os.environ.get("PGPASSWORD")
    if parts.password is None and password and "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo}:{quote(password, safe='')}@{host}"
    return urlunsplit((scheme, netloc, parts.path, parts.query, parts.fragment))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("sql")
    p.add_argument("out")
    p.add_argument("--partition-on")
    p.add_argument("--partition-num", type=int)
    a = p.parse_args()
    kwargs = {}
    if a.partition_on:
        kwargs["partition_on"] = a.partition_on
        kwargs["partition_num"] = a.partition_num or 2
    t_read = time.perf_counter()
    table = cx.read_sql(with_password(a.url), a.sql, return_type="arrow", **kwargs)
    t_write = time.perf_counter()
    pq.write_table(table, a.out, compression="snappy")
    t_end = time.perf_counter()
    print(json.dumps({
        "import_s": round(t1 - t0, 4),
        "read_s": round(t_write - t_read, 4),
        "write_s": round(t_end - t_write, 4),
        "rows": table.num_rows,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
