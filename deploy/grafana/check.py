#!/usr/bin/env python3
"""Checks the cdrvault Grafana dashboards and provisioning files.

    python3 deploy/grafana/check.py                 # check; exit 1 on any error
    python3 deploy/grafana/check.py --strict        # also fail when promtool or PyYAML is missing
    python3 deploy/grafana/check.py --list-queries  # print every panel query, one JSON object a line

What is checked:
- dashboards/*.json are what generate.py writes (the JSON is generated; the
  queries live only in it and in generate.py's description of it);
- each dashboard is well-formed Grafana JSON: a uid, schemaVersion, the
  `datasource` and `instance` variables, unique panel ids and titles, grid
  positions inside the 24 columns that do not overlap, every panel and
  target on `${datasource}`, every target with an `expr` and a unique
  `refId`, a unit on every panel, red from 1 on the must-be-zero gauges;
- every query: only metrics of cdrvault's catalogue (below) and `up`, every
  selector filtered by `instance=~"$instance"`, `rate` over
  `$__rate_interval`, no Grafana variable other than the known ones;
- with promtool on PATH (Debian's `prometheus` package), every query parses:
  the queries, with the variables replaced as in --list-queries, are
  written as recording rules to a temporary file for `promtool check rules`;
- with PyYAML installed, the provisioning files name the Prometheus data
  source and the dashboards folder.

--list-queries substitutes `$__rate_interval` by 1m, `$__range` by 1h,
`$__interval` by 30s and `$instance` by `.*`, so that each printed
expression can be sent to a Prometheus as it is.

Standard library only; PyYAML optional.
"""

import argparse
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True

HERE = pathlib.Path(__file__).resolve().parent
DASHBOARD_DIR = HERE / "dashboards"
PROVISIONING_DIR = HERE / "provisioning"
GRID_WIDTH = 24
INSTANCE_QUERY = 'label_values(up{job="cdrvault"}, instance)'
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# cdrvault's metrics as /metrics exposes them (the README's "Metrics"), and
# the standard process metrics. A dashboard query may use only these and
# Prometheus's `up`.
COUNTERS = """
    cdrvault_ingest_records_received_total cdrvault_ingest_records_written_total
    cdrvault_ingest_records_refused_total cdrvault_ingest_bytes_received_total
    cdrvault_write_files_total cdrvault_write_bytes_total cdrvault_ingest_batches_total
    cdrvault_ingest_rebalances_total cdrvault_ingest_fenced_commits_total
    cdrvault_ingest_offset_gaps_total cdrvault_ingest_batches_dropped_total
    cdrvault_ingest_recovered_batches_total cdrvault_ingest_discarded_staged_files_total
    cdrvault_ingest_dead_letter_failures_total cdrvault_maintenance_lease_acquired_total
    cdrvault_retention_day_partitions_destroyed_total cdrvault_retention_rows_deleted_total
    cdrvault_token_keys_created_total cdrvault_compaction_day_partitions_total
    cdrvault_compaction_files_replaced_total cdrvault_compaction_failures_total
    cdrvault_access_calls_total cdrvault_access_refusals_total
    cdrvault_access_records_disclosed_total cdrvault_audit_entries_total
    cdrvault_audit_write_failures_total cdrvault_registry_rows_refused_total
    process_cpu_seconds_total
""".split()
GAUGES = """
    cdrvault_ingest_consumer_lag_records cdrvault_ingest_checkpoint_lag_records
    cdrvault_ingest_partitions_owned cdrvault_ingest_partition_owned cdrvault_ingest_brokers_up
    cdrvault_ingest_last_commit_timestamp_seconds cdrvault_maintenance_leader
    cdrvault_retention_oldest_day_timestamp_seconds cdrvault_retention_period_seconds
    cdrvault_retention_overdue_day_partitions cdrvault_retention_last_success_timestamp_seconds
    cdrvault_retention_clock_suspect cdrvault_keys_cached_destroyed cdrvault_keys_cached_day_keys
    cdrvault_compaction_last_success_timestamp_seconds cdrvault_audit_damaged
    cdrvault_storage_available_bytes cdrvault_storage_capacity_bytes
    process_resident_memory_bytes process_virtual_memory_bytes process_open_fds
    process_max_fds process_start_time_seconds up
""".split()
HISTOGRAMS = """
    cdrvault_ingest_batch_duration_seconds cdrvault_retention_sweep_duration_seconds
    cdrvault_compaction_run_duration_seconds cdrvault_access_lookup_duration_seconds
""".split()
KNOWN_METRICS = set(COUNTERS) | set(GAUGES) | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
# Metrics whose names other jobs share: their selectors also need job="cdrvault".
SHARED_NAMES = re.compile(r"^(up|process_\w+)$")

# Gauges that must stay 0. A panel that shows one colours it red from 1.
MUST_BE_ZERO = {
    "cdrvault_retention_overdue_day_partitions",
    "cdrvault_audit_damaged",
    "cdrvault_keys_cached_destroyed",
    "cdrvault_retention_clock_suspect",
}

SUBSTITUTIONS = [
    (re.compile(r"\$(__rate_interval\b|\{__rate_interval\})"), "1m"),
    (re.compile(r"\$(__range\b|\{__range\})"), "1h"),
    (re.compile(r"\$(__interval\b|\{__interval\})"), "30s"),
    (re.compile(r"\$(instance\b|\{instance\})"), ".*"),
]
TIME_UNITS = {"s", "ms", "m", "h", "d", "dtdurations", "dthms"}


def substitute(expr):
    """The query as Prometheus would receive it for a 1-hour range."""
    for pattern, value in SUBSTITUTIONS:
        expr = pattern.sub(value, expr)
    return expr


def strip_strings(expr):
    """The query with the contents of its string literals blanked, so that
    label values are not read as names."""
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def load_dashboards():
    boards = []
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        with path.open() as f:
            boards.append((path, json.load(f)))
    return boards


def all_panels(board):
    """Every panel, those inside collapsed rows included."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def queries(boards):
    """(dashboard uid, panel title, target) for every target of every panel."""
    for _, board in boards:
        for panel in all_panels(board):
            for t in panel.get("targets", []):
                yield board.get("uid"), panel.get("title"), t


class Problems:
    def __init__(self):
        self.items = []

    def add(self, where, message):
        self.items.append(f"{where}: {message}")


def check_generated(problems):
    """The committed JSON is exactly what generate.py writes."""
    sys.path.insert(0, str(HERE))
    import generate

    expected = generate.render_all()
    present = {p.name for p in DASHBOARD_DIR.glob("*.json")}
    for name, text in expected.items():
        path = DASHBOARD_DIR / name
        if not path.exists():
            problems.add(f"dashboards/{name}", "missing: run deploy/grafana/generate.py")
        elif path.read_text() != text:
            problems.add(f"dashboards/{name}", "differs from what generate.py writes: run deploy/grafana/generate.py")
    for name in sorted(present - set(expected)):
        problems.add(f"dashboards/{name}", "not written by generate.py")


def check_templating(where, board, problems):
    variables = {v.get("name"): v for v in board.get("templating", {}).get("list", [])}
    source = variables.get("datasource")
    if not source or source.get("type") != "datasource" or source.get("query") != "prometheus":
        problems.add(where, "needs a variable `datasource` of type datasource over prometheus")
    instance = variables.get("instance")
    if not instance or instance.get("type") != "query":
        problems.add(where, "needs a query variable `instance`")
        return
    query = instance.get("query")
    query = query.get("query") if isinstance(query, dict) else query
    if query != INSTANCE_QUERY:
        problems.add(where, f"variable `instance` must query {INSTANCE_QUERY}, not {query!r}")
    if instance.get("datasource") != DATASOURCE:
        problems.add(where, "variable `instance` must use ${datasource}")


def check_layout(where, panels, problems):
    taken = []
    for panel in panels:
        name = f"{where}: panel {panel.get('title')!r}"
        grid = panel.get("gridPos")
        if not isinstance(grid, dict) or not all(isinstance(grid.get(k), int) for k in "hwxy"):
            problems.add(name, "gridPos needs integer h, w, x and y")
            continue
        h, w, x, y = grid["h"], grid["w"], grid["x"], grid["y"]
        if h < 1 or w < 1 or x < 0 or y < 0 or x + w > GRID_WIDTH:
            problems.add(name, f"gridPos {grid} is outside the {GRID_WIDTH} columns")
        for other, (ox, oy, ow, oh) in taken:
            if x < ox + ow and ox < x + w and y < oy + oh and oy < y + h:
                problems.add(name, f"overlaps panel {other!r}")
        taken.append((panel.get("title"), (x, y, w, h)))


def check_thresholds(name, panel, metrics, problems):
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    unit = defaults.get("unit")
    if not unit:
        problems.add(name, "sets no unit")
    exprs = [t.get("expr", "") for t in panel.get("targets", [])]
    if exprs and all("histogram_quantile(" in e or e.startswith("time() -") for e in exprs) and unit not in TIME_UNITS:
        problems.add(name, f"shows durations but its unit is {unit!r}")
    if metrics & MUST_BE_ZERO:
        steps = defaults.get("thresholds", {}).get("steps", [])
        base_green = bool(steps) and steps[0].get("value") is None and steps[0].get("color") == "green"
        red_from_one = any(s.get("color") == "red" and s.get("value") is not None and 0 < s["value"] <= 1 for s in steps)
        if not (base_green and red_from_one):
            problems.add(name, "shows a must-be-zero gauge: thresholds must be green, then red from 1 at most")
        if panel.get("type") == "timeseries" and defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode", "off") == "off":
            problems.add(name, "shows a must-be-zero gauge: draw its thresholds")


def check_expr(name, expr, problems):
    """Returns the metric names the query selects."""
    plain = strip_strings(expr)
    metrics = set()
    # A name followed by a label matcher is a selector; every query here
    # selects with matchers, because every selector filters on $instance.
    for match in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{", plain):
        metric = match.group(1)
        metrics.add(metric)
        if metric not in KNOWN_METRICS:
            problems.add(name, f"unknown metric {metric}")
    # Names of the catalogue used without a matcher escape the filter.
    for match in re.finditer(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\b(\s*\{)?", plain):
        if match.group(1) in KNOWN_METRICS and not match.group(2):
            problems.add(name, f"{match.group(1)} has no label matchers")
    if not metrics:
        problems.add(name, "selects no metric")
    for match in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{((?:[^}\"]|\"(?:[^\"\\]|\\.)*\")*)\}", expr):
        metric, matchers = match.group(1), match.group(2)
        if 'instance=~"$instance"' not in matchers:
            problems.add(name, f'{metric} is not filtered by instance=~"$instance"')
        if SHARED_NAMES.match(metric) and 'job="cdrvault"' not in matchers:
            problems.add(name, f'{metric} is shared with other jobs: add job="cdrvault"')
    for match in re.finditer(r"\b(?:i?rate)\(\s*[^\[]*\[([^\]]*)\]", expr):
        if match.group(1) != "$__rate_interval":
            problems.add(name, f"rate over [{match.group(1)}]: use [$__rate_interval]")
    left = re.findall(r"\$\{?\w+", substitute(expr))
    if left:
        problems.add(name, f"uses variables that cannot be substituted: {', '.join(sorted(set(left)))}")
    return metrics


def check_dashboard(path, board, problems):
    where = f"dashboards/{path.name}"
    for key in ("uid", "title"):
        if not isinstance(board.get(key), str) or not board.get(key):
            problems.add(where, f"needs a {key}")
    if not isinstance(board.get("schemaVersion"), int) or board["schemaVersion"] < 36:
        problems.add(where, "needs schemaVersion 36 or later")
    check_templating(where, board, problems)
    panels = list(all_panels(board))
    if not panels:
        problems.add(where, "has no panels")
    check_layout(where, board.get("panels", []), problems)
    ids, titles = set(), set()
    for panel in panels:
        name = f"{where}: panel {panel.get('title')!r}"
        if not isinstance(panel.get("id"), int) or panel["id"] in ids:
            problems.add(name, f"id {panel.get('id')!r} is missing or not unique")
        ids.add(panel.get("id"))
        if panel.get("type") == "row":
            continue
        # The title names the panel's queries in --list-queries.
        if not panel.get("title") or panel.get("title") in titles:
            problems.add(name, "title is missing or not unique in the dashboard")
        titles.add(panel.get("title"))
        if panel.get("datasource") != DATASOURCE:
            problems.add(name, "datasource must be ${datasource}")
        targets = panel.get("targets")
        if not targets:
            problems.add(name, "has no targets")
            continue
        ref_ids, metrics = set(), set()
        for t in targets:
            ref = t.get("refId")
            if not isinstance(ref, str) or not ref or ref in ref_ids:
                problems.add(name, f"refId {ref!r} is missing or not unique")
            ref_ids.add(ref)
            if t.get("datasource", DATASOURCE) != DATASOURCE:
                problems.add(name, f"target {ref}: datasource must be ${{datasource}}")
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problems.add(name, f"target {ref} has no expr")
                continue
            metrics |= check_expr(f"{name} target {ref}", expr, problems)
        check_thresholds(name, panel, metrics, problems)


def check_provisioning(problems, strict):
    try:
        import yaml
    except ImportError:
        if strict:
            problems.add("provisioning", "PyYAML is not installed (python3 -m pip install pyyaml)")
        return "provisioning: not checked, PyYAML is not installed"
    sources = yaml.safe_load((PROVISIONING_DIR / "datasources" / "prometheus.yml").read_text())
    wanted = {"name": "Prometheus", "uid": "prometheus", "type": "prometheus", "url": "http://prometheus:9090"}
    found = [s for s in sources.get("datasources", []) if all(s.get(k) == v for k, v in wanted.items())]
    if sources.get("apiVersion") != 1 or len(found) != 1:
        problems.add("provisioning/datasources/prometheus.yml", f"needs apiVersion 1 and one data source with {wanted}")
    providers = yaml.safe_load((PROVISIONING_DIR / "dashboards" / "cdrvault.yml").read_text())
    found = [
        p
        for p in providers.get("providers", [])
        if p.get("type", "file") == "file"
        and p.get("folder") == "cdrvault"
        and p.get("options", {}).get("path") == "/var/lib/grafana/dashboards"
    ]
    if providers.get("apiVersion") != 1 or len(found) != 1:
        problems.add(
            "provisioning/dashboards/cdrvault.yml",
            "needs apiVersion 1 and one file provider of /var/lib/grafana/dashboards into folder cdrvault",
        )
    return "provisioning: data source and dashboard provider ok"


def check_with_promtool(boards, problems, strict):
    """Parses every query with promtool, as the expression of a recording rule."""
    promtool = shutil.which("promtool")
    if not promtool:
        if strict:
            problems.add("promtool", "not on PATH (Debian package prometheus)")
        return "promtool: not on PATH, queries not parsed (install Debian's prometheus package)"
    listed = list(queries(boards))
    rules = [
        {"record": f"dashboard_query_{i}", "expr": substitute(t.get("expr", ""))} for i, (_, _, t) in enumerate(listed)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        # JSON is YAML: promtool reads this file as a rules file.
        path = pathlib.Path(tmp) / "dashboard-queries.rules.json"
        path.write_text(json.dumps({"groups": [{"name": "dashboard-queries", "rules": rules}]}, indent=1))
        run = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    if run.returncode == 0:
        return f"promtool check rules: all {len(rules)} queries parse"
    output = run.stdout + run.stderr
    named = False
    for match in re.finditer(r'"dashboard_query_(\d+)": (.*)', output):
        uid, title, t = listed[int(match.group(1))]
        problems.add(f"{uid}: panel {title!r} target {t.get('refId')}", f"promtool: {match.group(2)}")
        named = True
    if not named:
        problems.add("promtool check rules", output.strip())
    return "promtool check rules: failed"


def list_queries(boards):
    for uid, title, t in queries(boards):
        print(json.dumps({"dashboard": uid, "panel": title, "expr": substitute(t.get("expr", ""))}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list-queries", action="store_true", help="print every panel query as a JSON line and exit")
    parser.add_argument("--strict", action="store_true", help="fail when promtool or PyYAML is missing")
    args = parser.parse_args()

    boards = load_dashboards()
    if args.list_queries:
        list_queries(boards)
        return 0

    problems = Problems()
    check_generated(problems)
    uids = [b.get("uid") for _, b in boards]
    for uid in sorted({u for u in uids if uids.count(u) > 1}):
        problems.add("dashboards", f"uid {uid!r} is used twice")
    for path, board in boards:
        check_dashboard(path, board, problems)
    notes = [check_provisioning(problems, args.strict), check_with_promtool(boards, problems, args.strict)]

    panel_count = sum(1 for _, b in boards for p in all_panels(b) if p.get("type") != "row")
    print(f"dashboards: {len(boards)}, panels: {panel_count}, queries: {len(list(queries(boards)))}")
    for note in notes:
        print(note)
    if problems.items:
        for item in problems.items:
            print(f"error: {item}", file=sys.stderr)
        print(f"FAILED: {len(problems.items)} problem(s)", file=sys.stderr)
        return 1
    print("ok: dashboards match generate.py and are well-formed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
