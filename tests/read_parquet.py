"""Independent reader: opens cdrvault's Parquet output with pyarrow, knowing
nothing of cdrvault's code, and prints what it finds as JSON.

Usage: python3 tests/read_parquet.py DATA_DIR
"""
import glob
import json
import os
import sys

import pyarrow.compute as pc
import pyarrow.parquet as pq

data_dir = sys.argv[1]
files = sorted(glob.glob(os.path.join(data_dir, "cdr", "dt=*", "*.parquet")))
result = {
    "files": len(files),
    "rows": 0,
    "days": sorted({os.path.basename(os.path.dirname(f))[3:] for f in files}),
    "token_non_null": {},
    "token_types": {},
    "misplaced_rows": 0,
    "sealed_columns_in_data_files": 0,
    "companions": len(glob.glob(os.path.join(data_dir, "cdr", "dt=*", "_*.sealed"))),
    "sealed_readable_without_key": False,
}
for path in files:
    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    clear = schema.names
    result["sealed_columns_in_data_files"] += sum(n.endswith("_sealed") for n in clear)
    # Every column of a data file, with no key.
    table = pq.read_table(path)
    result["rows"] += table.num_rows
    day = os.path.basename(os.path.dirname(path))[3:]
    dates = pc.strftime(table["start_time"], format="%Y-%m-%d")
    result["misplaced_rows"] += table.num_rows - pc.sum(pc.equal(dates, day)).as_py()
    for name in clear:
        if name.endswith("_token"):
            result["token_types"][name] = str(table.schema.field(name).type)
            present = table.num_rows - table[name].null_count
            result["token_non_null"][name] = result["token_non_null"].get(name, 0) + present
    # Its companion (the sealed columns) opens only with the day key.
    companion = os.path.join(os.path.dirname(path), "_" + os.path.basename(path)[: -len(".parquet")] + ".sealed")
    try:
        pq.read_table(companion)
        result["sealed_readable_without_key"] = True
    except Exception:
        pass
print(json.dumps(result))
