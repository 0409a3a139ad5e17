"""The lookup benchmark's question asked of DuckDB on the same files: the
rows where the number's token of a day (each day has its own token key)
appears in any number role of that day's partition: a join of the files
with the (day, token) pairs of the window, one per number column. DuckDB reads the clear token columns
only; it cannot unseal, so this is the cheaper half of cdrvault's work.

Usage: python3 benches/lookup_duckdb.py DIR   (DIR as printed by the bench)
"""
import os
import sys
import time

import duckdb

root = sys.argv[1]
queries = [l.strip() for l in open(os.path.join(root, "queries.txt")) if not l.startswith("#")]
con = duckdb.connect()
files = os.path.join(root, "data", "cdr", "*", "*.parquet")
con.execute(f"CREATE VIEW cdr AS SELECT * FROM read_parquet('{files}', hive_partitioning = true)")
con.execute("CREATE TEMP TABLE q (dt VARCHAR, token BIGINT)")
# One equi-join per number column on (day, that day's token).
sql = " UNION ALL ".join(
    f"SELECT record_id, start_time FROM cdr JOIN q ON cdr.dt = q.dt AND cdr.{column} = q.token"
    for column in ("calling_number_token", "called_number_token", "redirecting_number_token")
)
times = []
for repeat in range(3):
    for line in queries:
        pairs = [(day, int(token)) for day, token in (pair.split(":") for pair in line.split(","))]
        con.execute("DELETE FROM q")
        con.executemany("INSERT INTO q VALUES (?, ?)", pairs)
        started = time.perf_counter()
        rows = con.execute(sql).fetchall()
        if repeat > 0:
            times.append(time.perf_counter() - started)
times.sort()
pct = lambda p: times[round((len(times) - 1) * p)] * 1000
print(f"duckdb {duckdb.__version__}: p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms over {len(times)} warm queries")
