"""The lookup benchmark's question asked of DuckDB on the same files: the
rows where one of the number's tokens (one per day: each day has its own
token key) appears in any number role, within the day partitions of the
window (hive partition pruning on). DuckDB reads the clear token columns
only; it cannot unseal, so this is the cheaper half of cdrvault's work.

Usage: python3 benches/lookup_duckdb.py DIR   (DIR as printed by the bench)
"""
import os
import sys
import time

import duckdb

root = sys.argv[1]
queries = [l.split() for l in open(os.path.join(root, "queries.txt")) if not l.startswith("#")]
con = duckdb.connect()
files = os.path.join(root, "data", "cdr", "*", "*.parquet")
sql = """
SELECT record_id, start_time FROM read_parquet('{files}', hive_partitioning = true)
WHERE dt BETWEEN ? AND ?
  AND (calling_number_token IN ({tokens}) OR called_number_token IN ({tokens})
       OR redirecting_number_token IN ({tokens}))
"""
times = []
for repeat in range(3):
    for first, last, tokens in queries:
        tokens = ",".join(str(int(t)) for t in tokens.split(","))
        started = time.perf_counter()
        rows = con.execute(sql.format(files=files, tokens=tokens), [first, last]).fetchall()
        if repeat > 0:
            times.append(time.perf_counter() - started)
times.sort()
pct = lambda p: times[round((len(times) - 1) * p)] * 1000
print(f"duckdb {duckdb.__version__}: p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms over {len(times)} warm queries")
