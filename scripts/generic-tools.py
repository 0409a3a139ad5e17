#!/usr/bin/env python3
"""What an analyst's generic tools make of a cdrvault data directory.

Runs each check in a process of its own (some pyarrow metadata calls abort
the process instead of raising) over every published data file of
DATA_DIR/cdr, and prints one line per check: ok, or what failed.

    python3 scripts/generic-tools.py DATA_DIR

Checks: DuckDB `SELECT *` and `SUMMARIZE` over the dataset; pyarrow
`read_table`, `read_metadata(...).to_dict()`, and the statistics of every
column chunk of every row group, file by file. Exit status 0 only if every
check passed. Needs duckdb and pyarrow (pip).
"""

import glob
import os
import subprocess
import sys

CHECKS = {
    "duckdb SELECT *": """
import duckdb
con = duckdb.connect()
rows = con.execute("SELECT * FROM read_parquet(?, hive_partitioning = true)", [files]).fetchall()
print(len(rows), "rows")
""",
    "duckdb SUMMARIZE": """
import duckdb
con = duckdb.connect()
# (a view takes no prepared parameter: the list is spelled out)
con.execute(f"CREATE VIEW cdr AS SELECT * FROM read_parquet({files!r}, hive_partitioning = true)")
print(len(con.execute("SUMMARIZE cdr").fetchall()), "columns summarised")
""",
    "pyarrow read_table": """
import pyarrow.parquet as pq
print(sum(pq.read_table(f).num_rows for f in files), "rows")
""",
    "pyarrow read_metadata().to_dict()": """
import pyarrow.parquet as pq
print(sum(len(pq.read_metadata(f).to_dict()["row_groups"]) for f in files), "row groups")
""",
    "pyarrow row-group statistics": """
import pyarrow.parquet as pq
chunks = 0
for f in files:
    meta = pq.read_metadata(f)
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            group.column(c).statistics
            chunks += 1
print(chunks, "column chunks")
""",
}


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    pattern = os.path.join(sys.argv[1], "cdr", "dt=*", "*.parquet")
    files = sorted(f for f in glob.glob(pattern) if not os.path.basename(f).startswith("."))
    if not files:
        print(f"no data files match {pattern}", file=sys.stderr)
        return 2
    failed = 0
    for name, body in CHECKS.items():
        program = f"files = {files!r}\n" + body
        run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=600)
        if run.returncode == 0:
            print(f"ok      {name}: {run.stdout.strip()}")
            continue
        failed += 1
        said = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1]
        if run.returncode < 0:
            said = f"the process was killed by signal {-run.returncode}"
        print(f"FAILED  {name}: {said}")
    print(f"{len(files)} files, {len(CHECKS) - failed} of {len(CHECKS)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
