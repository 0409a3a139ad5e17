"""Independent record counter: reads the record_id column of every published
cdrvault Parquet file with pyarrow, knowing nothing of cdrvault's code, and
prints what it finds as JSON (files, rows, distinct ids, duplicated rows and
a sha256 over the sorted distinct ids). With --expect FILE (one id a line)
it also counts the expected ids not stored and the stored ids not expected.

Usage: python3 tests/count_records.py DATA_DIR [--expect FILE]
"""
import argparse
import glob
import hashlib
import json
import os

import pyarrow.parquet as pq

parser = argparse.ArgumentParser()
parser.add_argument("data_dir")
parser.add_argument("--expect")
args = parser.parse_args()

# Only published files: temporaries and other non-data files start with
# '.' or '_' (a glob's '*' does not match a leading '.', but be explicit).
files = sorted(
    path
    for path in glob.glob(os.path.join(args.data_dir, "cdr", "dt=*", "*.parquet"))
    if not os.path.basename(path).startswith((".", "_"))
)
ids = []
for path in files:
    ids.extend(pq.read_table(path, columns=["record_id"])["record_id"].to_pylist())
distinct = set(ids)
result = {
    "files": len(files),
    "rows": len(ids),
    "distinct": len(distinct),
    "duplicated": len(ids) - len(distinct),
    "ids_sha256": hashlib.sha256("\n".join(sorted(distinct)).encode()).hexdigest(),
}
if args.expect:
    with open(args.expect) as f:
        expected = {line.strip() for line in f if line.strip()}
    result["missing"] = len(expected - distinct)
    result["unexpected"] = len(distinct - expected)
print(json.dumps(result))
