#!/usr/bin/env python3
"""What an analyst's generic tools make of a cdrvault data directory.

Runs each check in a process of its own (some pyarrow metadata calls abort
the process instead of raising) over every published data file of
DATA_DIR/cdr, and prints one line per check: ok, or what failed.

    python3 scripts/generic-tools.py [--spark] DATA_DIR

Checks: DuckDB `SELECT *` and `SUMMARIZE` over the dataset; pyarrow
`read_table`, `read_metadata(...).to_dict()`, and the statistics of every
column chunk of every row group, file by file. With --spark, also Spark's
`spark.read.parquet` of the dataset's directory (dt= partitions), every
row collected, and `describe().collect()`, each in local mode on
127.0.0.1 without a UI. DuckDB and Spark are pointed at the dataset as an
analyst would (a glob, a directory), so they meet the hidden files too.
Exit status 0 only if every check that ran passed. Needs duckdb and pyarrow
(pip); --spark also needs pyspark and Java 17 or later, which
scripts/install-spark.sh installs, printing the python to run this with:

    "$(scripts/install-spark.sh)" scripts/generic-tools.py --spark DATA_DIR
"""

import glob
import os
import subprocess
import sys

CHECKS = {
    "duckdb SELECT *": """
import duckdb
con = duckdb.connect()
rows = con.execute("SELECT * FROM read_parquet(?, hive_partitioning = true)", [dataset + "/*/*.parquet"]).fetchall()
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

# Before each Spark check: a local session that listens on 127.0.0.1 only and
# has no UI, the dataset read from its directory, and
# a failure reported as its innermost Java cause on the last line of stderr
# (the line the report shows) rather than a py4j stack trace.
SPARK_SETUP = """
import os, sys
os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
from pyspark.sql import SparkSession
spark = (
    SparkSession.builder.master("local[2]")
    .appName("cdrvault generic-tools")
    .config("spark.driver.host", "127.0.0.1")
    .config("spark.driver.bindAddress", "127.0.0.1")
    .config("spark.ui.enabled", "false")
    .config("spark.ui.showConsoleProgress", "false")
    .getOrCreate()
)
spark.sparkContext.setLogLevel("ERROR")
# The dataset's directory, as an analyst points Spark at it: Spark skips the
# hidden companions, indexes and temporaries (leading `_` or `.`) itself.
df = spark.read.parquet(dataset)

def fail(error):
    cause = getattr(error, "java_exception", None)
    while cause is not None and cause.getCause() is not None:
        cause = cause.getCause()
    said = cause.toString() if cause is not None else f"{type(error).__name__}: {error}"
    spark.stop()
    print(said.strip().splitlines()[0], file=sys.stderr)
    sys.exit(1)
"""

SPARK_CHECKS = {
    "spark SELECT *": """
try:
    rows = df.collect()
except Exception as error:
    fail(error)
print(len(rows), "rows,", len(df.columns), "columns")
""",
    "spark describe()": """
try:
    summary = df.describe().collect()
except Exception as error:
    fail(error)
print(len(summary), "statistics of", len(summary[0]) - 1, "columns")
""",
}


def main() -> int:
    arguments = sys.argv[1:]
    checks = dict(CHECKS)
    if "--spark" in arguments:
        arguments.remove("--spark")
        checks.update({name: SPARK_SETUP + body for name, body in SPARK_CHECKS.items()})
    if len(arguments) != 1 or arguments[0].startswith("-"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    pattern = os.path.join(arguments[0], "cdr", "dt=*", "*.parquet")
    files = sorted(f for f in glob.glob(pattern) if not os.path.basename(f).startswith("."))
    if not files:
        print(f"no data files match {pattern}", file=sys.stderr)
        return 2
    failed = 0
    for name, body in checks.items():
        program = f"files = {files!r}\ndataset = {os.path.join(arguments[0], 'cdr')!r}\n" + body
        run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=600)
        if run.returncode == 0:
            print(f"ok      {name}: {run.stdout.strip()}")
            continue
        failed += 1
        said = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1]
        if run.returncode < 0:
            said = f"the process was killed by signal {-run.returncode}"
        print(f"FAILED  {name}: {said}")
    print(f"{len(files)} files, {len(checks) - failed} of {len(checks)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
