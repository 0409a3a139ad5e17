#!/usr/bin/env python3
"""Writes the cdrvault Grafana dashboards, deploy/grafana/dashboards/*.json.

The dashboards are described here, one function per dashboard, and turned
into Grafana JSON (schemaVersion 39) by the helpers below, which give every
panel the same datasource variable, units, colours and a computed grid
position. Edit this file, run it, and commit the JSON it writes: Grafana
loads the JSON, and `check.py` fails when the JSON differs from what this
file writes.

    python3 deploy/grafana/generate.py          # rewrite the JSON files
    python3 deploy/grafana/check.py             # check them

Conventions every query follows (check.py enforces them):
- every selector carries `instance=~"$instance"`; `process_*` and `up`, whose
  names other jobs share, also carry `job="cdrvault"`;
- rates use `[$__rate_interval]`; counts over the dashboard's range use
  `increase(...[$__range])`; the only fixed windows are the 24 hours of
  "records disclosed, last 24 h" and the 6 hours that predict_linear fits
  the free space over;
- the dashboards show UTC, the time zone of cdrvault's day partitions.

Standard library only.
"""

import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
DASHBOARD_DIR = HERE / "dashboards"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
INSTANCE_QUERY = 'label_values(up{job="cdrvault"}, instance)'
GRID_WIDTH = 24

# The refusal reasons of the lawful-access API that mean the caller could
# not be authenticated (as opposed to an authenticated caller who may not).
AUTHENTICATION_REASONS = "unknown_token|missing_credentials|revoked_credentials|expired_credentials|unknown_certificate"

# --- PromQL helpers ---------------------------------------------------------


def sel(metric, *matchers):
    """A selector of `metric` for the instances chosen on the dashboard."""
    if metric == "up" or metric.startswith("process_"):
        matchers = ('job="cdrvault"',) + matchers
    return metric + "{" + ", ".join(matchers + ('instance=~"$instance"',)) + "}"


def rate(metric, *matchers):
    return f"rate({sel(metric, *matchers)}[$__rate_interval])"


def increase(metric, *matchers, window="$__rate_interval"):
    return f"increase({sel(metric, *matchers)}[{window}])"


def quantile(q, histogram, by=()):
    """The q-quantile of a `_seconds` histogram over the rate window."""
    labels = ", ".join(by + ("le",))
    return f"histogram_quantile({q}, sum by ({labels}) ({rate(histogram + '_bucket')}))"


def mean(histogram, by="instance"):
    """The mean observation of a histogram in each rate window: for runs
    that happen once an hour, a point per run rather than a quantile that
    needs many observations."""
    return f"sum by ({by}) ({rate(histogram + '_sum')}) / sum by ({by}) ({rate(histogram + '_count')})"


def age(timestamp_metric):
    """Seconds since a unix-time gauge, where it was ever set (not 0)."""
    return f"time() - ({sel(timestamp_metric)} > 0)"


def owner_only(gauge):
    """A per-partition gauge without the reports of instances that gave the
    partition up: an instance keeps the last value of a partition it no
    longer reads, and marks it 0 in cdrvault_ingest_partition_owned.
    (`unless ... == 0` rather than `and ... == 1`, so that the lag still
    shows where the ownership gauge is not exported.)"""
    return (
        f"max by (topic, partition) ({sel(gauge)} "
        f"unless on (instance, topic, partition) ({sel('cdrvault_ingest_partition_owned')} == 0))"
    )


# --- Thresholds and value mappings -----------------------------------------

NEUTRAL = [("blue", None)]
# A gauge or a count that must stay 0: anything from 1 up is red.
MUST_BE_ZERO = [("green", None), ("red", 1)]
ANY_IS_BAD = MUST_BE_ZERO
SOME_ARE_EXPECTED = [("green", None), ("yellow", 1)]
# The colours follow the alerting rules of deploy/prometheus: red where an
# alert would fire, yellow on the way there.
# Retention and compaction run every hour by default (retention.interval,
# compaction.interval): red after two intervals without a success.
HOURLY_JOB = [("green", None), ("yellow", 90 * 60), ("red", 2 * 3600)]
# Red after 15 minutes without a durable commit.
COMMIT_AGE = [("green", None), ("yellow", 5 * 60), ("red", 15 * 60)]
ALL_UP = [("red", None), ("green", 1)]
EXACTLY_ONE = [("red", None), ("green", 1), ("red", 2)]
FILLING = [("green", None), ("yellow", 0.8), ("red", 0.9)]
OVERDUE_WHEN_NEGATIVE = [("red", None), ("green", 0)]
TIME_TO_FULL = [("red", None), ("yellow", 86400), ("green", 7 * 86400)]


def flag(ok, bad):
    """Value texts for a 0/1 gauge."""
    return [
        {
            "type": "value",
            "options": {
                "0": {"index": 0, "text": ok, "color": "green"},
                "1": {"index": 1, "text": bad, "color": "red"},
            },
        }
    ]


# --- Panels -----------------------------------------------------------------


def target(expr, legend="", instant=False):
    return {"expr": expr, "legend": legend, "instant": instant}


def _targets(targets, instant):
    out = []
    for i, t in enumerate(targets):
        if isinstance(t, str):
            t = target(t)
        is_instant = t["instant"] or instant
        out.append(
            {
                "datasource": DATASOURCE,
                "editorMode": "code",
                "expr": t["expr"],
                "instant": is_instant,
                "legendFormat": t["legend"] or "__auto",
                "range": not is_instant,
                "refId": chr(ord("A") + i),
            }
        )
    return out


def _steps(thresholds):
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in thresholds]}


def _field_defaults(unit, thresholds, mappings, decimals, no_value):
    defaults = {"mappings": mappings or [], "thresholds": _steps(thresholds), "unit": unit}
    if decimals is not None:
        defaults["decimals"] = decimals
    if no_value is not None:
        defaults["noValue"] = no_value
    return defaults


def timeseries(
    title,
    unit,
    targets,
    description,
    w=12,
    h=8,
    style="line",
    thresholds=None,
    decimals=None,
    no_value=None,
    stack=False,
):
    """A time series. `style` is "line", "bars" (counts per rate window),
    "points" (sparse events) or "steps" (gauges that move in steps). With
    `thresholds` the thresholds are drawn as dashed lines."""
    defaults = _field_defaults(unit, thresholds or NEUTRAL, None, decimals, no_value)
    defaults["color"] = {"mode": "palette-classic"}
    defaults["custom"] = {
        "axisSoftMin": 0,
        "drawStyle": {"line": "line", "steps": "line", "bars": "bars", "points": "points"}[style],
        "fillOpacity": {"bars": 80, "points": 0}.get(style, 10),
        "lineInterpolation": "stepAfter" if style == "steps" else "linear",
        "lineWidth": 1,
        "pointSize": 5,
        "showPoints": "always" if style == "points" else "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
        "thresholdsStyle": {"mode": "dashed" if thresholds else "off"},
    }
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "size": (w, h),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": _targets(targets, instant=False),
    }


def stat(
    title,
    unit,
    targets,
    description,
    w=4,
    h=4,
    thresholds=NEUTRAL,
    mappings=None,
    instant=False,
    decimals=None,
    no_value=None,
    text_mode="value",
):
    """A single value, coloured by its thresholds. Counts over the range
    (`[$__range]`) are instant queries; the others draw a sparkline."""
    defaults = _field_defaults(unit, thresholds, mappings, decimals, no_value)
    defaults["color"] = {"mode": "thresholds"}
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "size": (w, h),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "colorMode": "value",
            "graphMode": "none" if instant else "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": text_mode,
            "wideLayout": True,
        },
        "targets": _targets(targets, instant),
    }


def bargauge(title, unit, targets, description, w=12, h=8):
    """One bar per series of an instant query."""
    defaults = _field_defaults(unit, NEUTRAL, None, None, None)
    defaults["color"] = {"mode": "thresholds"}
    return {
        "type": "bargauge",
        "title": title,
        "description": description,
        "size": (w, h),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "displayMode": "basic",
            "minVizHeight": 16,
            "minVizWidth": 8,
            "namePlacement": "auto",
            "orientation": "horizontal",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showUnfilled": True,
            "sizing": "auto",
            "valueMode": "color",
        },
        "targets": _targets(targets, instant=True),
    }


def row(title):
    return {"type": "row", "title": title, "size": (GRID_WIDTH, 1)}


def _lay_out(items):
    """Numbers the panels and places them left to right, a row panel or a
    panel that does not fit on the current line starting a new one."""
    panels, x, y, line_height = [], 0, 0, 0
    for number, item in enumerate(items, start=1):
        panel = dict(item)
        w, h = panel.pop("size")
        if panel["type"] == "row" or x + w > GRID_WIDTH:
            x, y, line_height = 0, y + line_height, 0
        panel["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        panel["id"] = number
        if panel["type"] == "row":
            panel.update({"collapsed": False, "panels": []})
        else:
            panel["datasource"] = DATASOURCE
        panels.append(panel)
        x, line_height = x + w, max(line_height, h)
    return panels


# --- Dashboards ---------------------------------------------------------------


def _templating():
    return {
        "list": [
            {
                # No current value: Grafana starts on its default data source.
                "hide": 0,
                "includeAll": False,
                "label": "Data source",
                "multi": False,
                "name": "datasource",
                "options": [],
                "query": "prometheus",
                "refresh": 1,
                "regex": "",
                "skipUrlSync": False,
                "type": "datasource",
            },
            {
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                "datasource": DATASOURCE,
                "definition": INSTANCE_QUERY,
                "hide": 0,
                "includeAll": True,
                "label": "Instance",
                "multi": True,
                "name": "instance",
                "options": [],
                "query": {
                    "qryType": 1,
                    "query": INSTANCE_QUERY,
                    "refId": "PrometheusVariableQueryEditor-VariableQuery",
                },
                "refresh": 2,
                "regex": "",
                "skipUrlSync": False,
                "sort": 1,
                "type": "query",
            },
        ]
    }


def dashboard(slug, title, description, items):
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "links": [
            {
                "asDropdown": False,
                "icon": "external link",
                "includeVars": True,
                "keepTime": True,
                "tags": ["cdrvault"],
                "targetBlank": False,
                "title": "cdrvault",
                "tooltip": "",
                "type": "dashboards",
                "url": "",
            }
        ],
        "panels": _lay_out(items),
        "refresh": "1m",
        "schemaVersion": 39,
        "tags": ["cdrvault", slug],
        "templating": _templating(),
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "utc",
        "title": f"cdrvault / {title}",
        "uid": f"cdrvault-{slug}",
        "version": 1,
        "weekStart": "",
    }


def ingest():
    lag = "Instances that gave the partition up are left out; the largest remaining value is shown."
    return dashboard(
        "ingest",
        "Ingest",
        "Records from Kafka to durable Parquet: throughput, refusals, batches, partitions and lag.",
        [
            row("Overview"),
            stat(
                "Instances up",
                "none",
                [f"sum({sel('up')})"],
                "cdrvault instances that answered the last scrape.",
                thresholds=ALL_UP,
            ),
            stat(
                "Records written",
                "ops",
                [f"sum({rate('cdrvault_ingest_records_written_total')})"],
                "Records made durable in Parquet per second, all instances.",
            ),
            stat(
                "Records refused",
                "ops",
                [f"sum({rate('cdrvault_ingest_records_refused_total')})"],
                "Records sent to the dead-letter topic per second, all reasons.",
            ),
            stat(
                "Consumer lag",
                "short",
                [f"sum({owner_only('cdrvault_ingest_consumer_lag_records')})"],
                "Records behind the stored offset, summed over partitions. " + lag,
            ),
            stat(
                "Since last commit",
                "s",
                [f"time() - max({sel('cdrvault_ingest_last_commit_timestamp_seconds')} > 0)"],
                "Time since any instance last committed a batch durably; red from 15 minutes.",
                thresholds=COMMIT_AGE,
            ),
            stat(
                "Dead-letter failures in range",
                "none",
                [f"sum({increase('cdrvault_ingest_dead_letter_failures_total', window='$__range')})"],
                "Refused records that could not be written to the dead-letter topic "
                "in the dashboard's time range. Their batch is not committed.",
                thresholds=ANY_IS_BAD,
                instant=True,
                decimals=0,
            ),
            row("Records"),
            timeseries(
                "Records received and written",
                "ops",
                [
                    target(f"sum by (instance) ({rate('cdrvault_ingest_records_received_total')})", "{{instance}} received"),
                    target(f"sum by (instance) ({rate('cdrvault_ingest_records_written_total')})", "{{instance}} written"),
                ],
                "Records read from Kafka and records made durable in Parquet, per second.",
            ),
            timeseries(
                "Records refused by reason",
                "ops",
                [target(f"sum by (reason) ({rate('cdrvault_ingest_records_refused_total')})", "{{reason}}")],
                "Refused records per second by reason code (see the README's table of reasons).",
                stack=True,
            ),
            timeseries(
                "Bytes received and written",
                "Bps",
                [
                    target(f"sum by (instance) ({rate('cdrvault_ingest_bytes_received_total')})", "{{instance}} received"),
                    target(f"sum by (instance) ({rate('cdrvault_write_bytes_total')})", "{{instance}} written"),
                ],
                "Bytes of records read from Kafka, and bytes of Parquet made durable.",
            ),
            timeseries(
                "Parquet files made durable",
                "ops",
                [target(f"sum by (instance) ({rate('cdrvault_write_files_total')})", "{{instance}}")],
                "Parquet files written and synced per second: one per day and batch.",
            ),
            row("Batches"),
            timeseries(
                "Batch duration p50 and p99",
                "s",
                [
                    target(quantile(0.5, "cdrvault_ingest_batch_duration_seconds", by=("instance",)), "{{instance}} p50"),
                    target(quantile(0.99, "cdrvault_ingest_batch_duration_seconds", by=("instance",)), "{{instance}} p99"),
                ],
                "Time from a batch's first record to its durable commit; "
                "includes up to ingest.batch_linger of waiting for records.",
            ),
            timeseries(
                "Batches",
                "ops",
                [target(f"sum by (instance) ({rate('cdrvault_ingest_batches_total')})", "{{instance}}")],
                "Batches per second.",
            ),
            timeseries(
                "Rebalances, fenced commits and dropped batches",
                "none",
                [
                    target(f"sum by (instance) ({increase('cdrvault_ingest_rebalances_total')})", "{{instance}} rebalances"),
                    target(f"sum by (instance) ({increase('cdrvault_ingest_fenced_commits_total')})", "{{instance}} fenced commits"),
                    target(f"sum by (instance) ({increase('cdrvault_ingest_batches_dropped_total')})", "{{instance}} batches dropped"),
                ],
                "Events per rate window. A fenced commit is a batch refused because its "
                "partitions moved to another instance; its records are read again there.",
                style="bars",
            ),
            timeseries(
                "Offset gaps and start-up recovery",
                "none",
                [
                    target(f"sum by (instance) ({increase('cdrvault_ingest_offset_gaps_total')})", "{{instance}} offset gaps"),
                    target(f"sum by (instance) ({increase('cdrvault_ingest_recovered_batches_total')})", "{{instance}} recovered batches"),
                    target(
                        f"sum by (instance) ({increase('cdrvault_ingest_discarded_staged_files_total')})",
                        "{{instance}} discarded staged files",
                    ),
                ],
                "Events per rate window. Offset gaps: a partition's offsets jumped ahead of "
                "the checkpoint and stayed so when read again. Recovered batches and "
                "discarded staged files: what a start-up completed or removed.",
                style="bars",
            ),
            row("Partitions"),
            timeseries(
                "Consumer lag per partition",
                "short",
                [target(owner_only("cdrvault_ingest_consumer_lag_records"), "{{topic}}/{{partition}}")],
                "Records behind the durably stored offset, from the Kafka client. " + lag,
            ),
            timeseries(
                "Checkpoint lag per partition",
                "short",
                [target(owner_only("cdrvault_ingest_checkpoint_lag_records"), "{{topic}}/{{partition}}")],
                "End of the partition minus the checkpoint committed with the data. " + lag,
            ),
            timeseries(
                "Partitions owned per instance",
                "none",
                [target(f"sum by (instance) ({sel('cdrvault_ingest_partitions_owned')})", "{{instance}}")],
                "Partitions each instance reads and commits.",
                style="steps",
            ),
            timeseries(
                "Kafka brokers up per instance",
                "none",
                [target(f"sum by (instance) ({sel('cdrvault_ingest_brokers_up')})", "{{instance}}")],
                "Brokers each instance's Kafka client is connected to. 0 for 5 minutes pages "
                "(CdrvaultKafkaUnreachable); the instance stays ready for lookups.",
                style="steps",
            ),
            timeseries(
                "Time since last commit",
                "s",
                [target(age("cdrvault_ingest_last_commit_timestamp_seconds"), "{{instance}}")],
                "Per instance. An instance that owns no partition does not commit.",
                thresholds=COMMIT_AGE,
            ),
            timeseries(
                "Dead-letter failures",
                "none",
                [target(f"sum by (instance) ({increase('cdrvault_ingest_dead_letter_failures_total')})", "{{instance}}")],
                "Failed writes to the dead-letter topic per rate window.",
                style="bars",
                thresholds=ANY_IS_BAD,
            ),
        ],
    )


def retention():
    oldest = sel("cdrvault_retention_oldest_day_timestamp_seconds")
    period = sel("cdrvault_retention_period_seconds")
    # A day D is destroyed once D < today - retention, that is from 00:00 UTC
    # of D + retention + 1 day (src/model/retention.rs).
    due_in_days = f"(({oldest} > 0) + on (job, instance) {period} + 86400 - time()) / 86400"
    leader = sel("cdrvault_maintenance_leader")
    return dashboard(
        "retention",
        "Retention and keys",
        "Destruction of expired days, key first: the promises that must hold, the age of the "
        "oldest day, sweeps, and the keys in memory.",
        [
            row("Promises"),
            stat(
                "Overdue day partitions",
                "none",
                [f"max({sel('cdrvault_retention_overdue_day_partitions')})"],
                "Expired days that still have files. Must be 0: the first sweep after a day expires destroys it.",
                thresholds=MUST_BE_ZERO,
            ),
            stat(
                "Clock suspect",
                "none",
                [f"max({sel('cdrvault_retention_clock_suspect')})"],
                "1 while retention refuses to destroy because the clock went back or jumped ahead. "
                "Check the host's time, then `cdrvault retention confirm-clock`.",
                thresholds=MUST_BE_ZERO,
                mappings=flag("trusted", "suspect"),
            ),
            stat(
                "Destroyed days with a cached key",
                "none",
                [f"max({sel('cdrvault_keys_cached_destroyed')})"],
                "Destroyed days whose key is still in a process's memory. Must be 0: the caches are swept every minute.",
                thresholds=MUST_BE_ZERO,
            ),
            stat(
                "Oldest day age",
                "d",
                [f"max(({age('cdrvault_retention_oldest_day_timestamp_seconds')}) / 86400)"],
                "Days since 00:00 UTC of the oldest day that still has files.",
                decimals=1,
            ),
            stat(
                "Oldest day due in",
                "d",
                [f"min({due_in_days})"],
                "Days until the oldest day expires (00:00 UTC of that day plus the retention period "
                "plus one day); the next sweep after that destroys it. Negative: overdue.",
                thresholds=OVERDUE_WHEN_NEGATIVE,
                decimals=1,
            ),
            stat(
                "Since last successful sweep",
                "s",
                [f"time() - max({sel('cdrvault_retention_last_success_timestamp_seconds')} > 0)"],
                "Sweeps run every retention.interval (1 hour by default) on the maintenance leader; "
                "red after two intervals.",
                thresholds=HOURLY_JOB,
            ),
            stat(
                "Maintenance leaders",
                "none",
                [f"sum({leader})"],
                "Instances holding the maintenance lease; one runs retention and compaction at a time. "
                "0 is expected only when the chosen instances exclude the leader.",
                thresholds=EXACTLY_ONE,
            ),
            stat(
                "Maintenance leader",
                "none",
                [target(f"max by (instance) ({leader}) == 1", "{{instance}}")],
                "The instance that holds the maintenance lease now.",
                text_mode="name",
                no_value="none",
            ),
            stat(
                "Day partitions destroyed in range",
                "none",
                [f"sum({increase('cdrvault_retention_day_partitions_destroyed_total', window='$__range')})"],
                "Days destroyed in the dashboard's time range.",
                instant=True,
                decimals=0,
            ),
            stat(
                "Rows deleted in range",
                "short",
                [f"sum({increase('cdrvault_retention_rows_deleted_total', window='$__range')})"],
                "Rows of the destroyed days, in the dashboard's time range.",
                instant=True,
                decimals=0,
            ),
            stat(
                "Sweep duration p99",
                "s",
                [f"histogram_quantile(0.99, sum by (le) ({increase('cdrvault_retention_sweep_duration_seconds_bucket', window='$__range')}))"],
                "Over the sweeps in the dashboard's time range.",
                instant=True,
            ),
            stat(
                "Day keys cached",
                "none",
                [f"sum({sel('cdrvault_keys_cached_day_keys')})"],
                "Day keys held in memory by the chosen instances.",
            ),
            row("Age and deadline"),
            timeseries(
                "Oldest day age and retention period",
                "d",
                [
                    target(f"({age('cdrvault_retention_oldest_day_timestamp_seconds')}) / 86400", "{{instance}} oldest day"),
                    target(f"{period} / 86400", "{{instance}} retention period"),
                ],
                "The age of the oldest day should stay below the retention period plus one day.",
                decimals=1,
            ),
            timeseries(
                "Days until the oldest day is due",
                "d",
                [target(due_in_days, "{{instance}}")],
                "Negative: the oldest day is overdue.",
                thresholds=OVERDUE_WHEN_NEGATIVE,
                decimals=1,
            ),
            timeseries(
                "Must stay at zero",
                "none",
                [
                    target(sel("cdrvault_retention_overdue_day_partitions"), "{{instance}} overdue day partitions"),
                    target(sel("cdrvault_retention_clock_suspect"), "{{instance}} clock suspect"),
                    target(sel("cdrvault_keys_cached_destroyed"), "{{instance}} destroyed days with a cached key"),
                ],
                "Each line must stay at 0.",
                style="steps",
                thresholds=MUST_BE_ZERO,
            ),
            timeseries(
                "Time since the last successful sweep",
                "s",
                [target(age("cdrvault_retention_last_success_timestamp_seconds"), "{{instance}}")],
                "Per instance; only the maintenance leader sweeps.",
                thresholds=HOURLY_JOB,
            ),
            row("Sweeps"),
            timeseries(
                "Sweep duration",
                "s",
                [target(mean("cdrvault_retention_sweep_duration_seconds"), "{{instance}}")],
                "Mean duration of the sweeps in each rate window: one point per sweep.",
                w=8,
                style="points",
            ),
            timeseries(
                "Day partitions destroyed",
                "none",
                [target(f"sum by (instance) ({increase('cdrvault_retention_day_partitions_destroyed_total')})", "{{instance}}")],
                "Days destroyed per rate window: about one a day, just after midnight UTC.",
                w=8,
                style="bars",
            ),
            timeseries(
                "Rows deleted",
                "short",
                [target(f"sum by (instance) ({increase('cdrvault_retention_rows_deleted_total')})", "{{instance}}")],
                "Rows of the destroyed days per rate window.",
                w=8,
                style="bars",
            ),
            row("Keys and leadership"),
            timeseries(
                "Day keys cached per instance",
                "none",
                [target(sel("cdrvault_keys_cached_day_keys"), "{{instance}}")],
                "Day keys held in memory per instance.",
                w=8,
                style="steps",
            ),
            timeseries(
                "Token keys created",
                "none",
                [target(f"sum by (instance) ({increase('cdrvault_token_keys_created_total')})", "{{instance}}")],
                "Token keys created per rate window.",
                w=8,
                style="bars",
            ),
            timeseries(
                "Maintenance lease",
                "none",
                [
                    target(leader, "{{instance}} leader"),
                    target(f"sum by (instance) ({increase('cdrvault_maintenance_lease_acquired_total')})", "{{instance}} acquired"),
                ],
                "1 on the instance that runs retention and compaction; acquisitions per rate window.",
                w=8,
                style="steps",
            ),
        ],
    )


def compaction():
    return dashboard(
        "compaction",
        "Compaction",
        "Rewriting each closed day into one sorted, indexed file per token key.",
        [
            row("Overview"),
            stat(
                "Since last successful compaction",
                "s",
                [f"time() - max({sel('cdrvault_compaction_last_success_timestamp_seconds')} > 0)"],
                "Compaction runs every compaction.interval (1 hour by default) on the maintenance leader; "
                "red after two intervals.",
                thresholds=HOURLY_JOB,
            ),
            stat(
                "Day partitions compacted in range",
                "none",
                [f"sum({increase('cdrvault_compaction_day_partitions_total', window='$__range')})"],
                "Days compacted in the dashboard's time range.",
                instant=True,
                decimals=0,
            ),
            stat(
                "Files replaced in range",
                "none",
                [f"sum({increase('cdrvault_compaction_files_replaced_total', window='$__range')})"],
                "Files replaced by compacted ones in the dashboard's time range.",
                instant=True,
                decimals=0,
            ),
            stat(
                "Failures in range",
                "none",
                [f"sum({increase('cdrvault_compaction_failures_total', window='$__range')})"],
                "Failed compactions in the dashboard's time range; the day stays as it was "
                "and lookups over it stay slower.",
                thresholds=ANY_IS_BAD,
                instant=True,
                decimals=0,
            ),
            stat(
                "Run duration p99",
                "s",
                [f"histogram_quantile(0.99, sum by (le) ({increase('cdrvault_compaction_run_duration_seconds_bucket', window='$__range')}))"],
                "Over the runs in the dashboard's time range.",
                instant=True,
            ),
            stat(
                "Maintenance leader",
                "none",
                [target(f"max by (instance) ({sel('cdrvault_maintenance_leader')}) == 1", "{{instance}}")],
                "The instance that holds the maintenance lease and compacts.",
                text_mode="name",
                no_value="none",
            ),
            row("Runs"),
            timeseries(
                "Day partitions compacted",
                "none",
                [target(f"sum by (instance) ({increase('cdrvault_compaction_day_partitions_total')})", "{{instance}}")],
                "Days compacted per rate window.",
                style="bars",
            ),
            timeseries(
                "Files replaced",
                "none",
                [target(f"sum by (instance) ({increase('cdrvault_compaction_files_replaced_total')})", "{{instance}}")],
                "Files replaced per rate window.",
                style="bars",
            ),
            timeseries(
                "Failures",
                "none",
                [target(f"sum by (instance) ({increase('cdrvault_compaction_failures_total')})", "{{instance}}")],
                "Failed compactions per rate window.",
                style="bars",
                thresholds=ANY_IS_BAD,
            ),
            timeseries(
                "Run duration",
                "s",
                [target(mean("cdrvault_compaction_run_duration_seconds"), "{{instance}}")],
                "Mean duration of the runs in each rate window: one point per run.",
                style="points",
            ),
            timeseries(
                "Time since the last successful compaction",
                "s",
                [target(age("cdrvault_compaction_last_success_timestamp_seconds"), "{{instance}}")],
                "Per instance; only the maintenance leader compacts.",
                w=24,
                thresholds=HOURLY_JOB,
            ),
        ],
    )


def access():
    calls = "cdrvault_access_calls_total"
    disclosed = "cdrvault_access_records_disclosed_total"
    authentication = f'reason=~"{AUTHENTICATION_REASONS}"'
    not_ok = 'outcome!="ok"'
    return dashboard(
        "access",
        "Lawful access",
        "The lawful-access API: calls, refusals, authentication failures, latency, "
        "records disclosed per authority, and the audit trail.",
        [
            row("Overview"),
            stat(
                "Audit trail",
                "none",
                [f"max({sel('cdrvault_audit_damaged')})"],
                "1 once the audit trail was found cut or rewritten against its signed head: "
                "audited actions are refused. Run `cdrvault audit verify`.",
                thresholds=MUST_BE_ZERO,
                mappings=flag("intact", "damaged"),
            ),
            stat(
                "Calls",
                "ops",
                [f"sum({rate(calls)})"],
                "API calls per second, all methods and outcomes.",
            ),
            stat(
                "Calls not ok",
                "percentunit",
                [f"(sum({rate(calls, not_ok)}) or vector(0)) / (sum({rate(calls)}) > 0)"],
                "Share of calls that ended with a gRPC error status, refusals included; no value without calls.",
            ),
            stat(
                "Authentication failures in range",
                "none",
                [f"sum({increase('cdrvault_access_refusals_total', authentication, window='$__range')})"],
                "Calls refused because the caller could not be authenticated, in the dashboard's time range.",
                thresholds=SOME_ARE_EXPECTED,
                instant=True,
                decimals=0,
            ),
            stat(
                "Records disclosed, last 24 h",
                "short",
                [f"sum({increase(disclosed, window='24h')})"],
                "Records in delivered results over the last 24 hours, all authorities and subject-access exports.",
                instant=True,
                decimals=0,
            ),
            stat(
                "Lookup duration p99",
                "s",
                [quantile(0.99, "cdrvault_access_lookup_duration_seconds")],
                "99th percentile of lookup duration, all instances.",
            ),
            row("Calls"),
            timeseries(
                "Calls by method and outcome",
                "ops",
                [target(f"sum by (method, outcome) ({rate(calls)})", "{{method}} {{outcome}}")],
                "Outcome is ok or the gRPC status code name.",
            ),
            timeseries(
                "Refusals by reason",
                "ops",
                [target(f"sum by (reason) ({rate('cdrvault_access_refusals_total')})", "{{reason}}")],
                "Every refusal is also audited.",
                stack=True,
            ),
            timeseries(
                "Authentication failures by reason",
                "ops",
                [target(f"sum by (reason) ({rate('cdrvault_access_refusals_total', authentication)})", "{{reason}}")],
                "Unknown, missing, revoked or expired credentials and unknown client certificates.",
                stack=True,
            ),
            timeseries(
                "Lookup duration p50 and p99",
                "s",
                [
                    target(quantile(0.5, "cdrvault_access_lookup_duration_seconds"), "p50"),
                    target(quantile(0.99, "cdrvault_access_lookup_duration_seconds"), "p99"),
                ],
                "Lookup duration, all instances.",
            ),
            row("Disclosure and audit"),
            timeseries(
                "Records disclosed per authority",
                "ops",
                [target(f"sum by (authority) ({rate(disclosed)})", "{{authority}}")],
                "Records in delivered results per second; data_subject is subject-access exports.",
                stack=True,
            ),
            bargauge(
                "Records disclosed per authority, last 24 h",
                "short",
                [target(f"sort_desc(sum by (authority) ({increase(disclosed, window='24h')}))", "{{authority}}")],
                "Records in delivered results over the last 24 hours, whatever the time range.",
            ),
            timeseries(
                "Audit entries",
                "ops",
                [target(f"sum by (instance) ({rate('cdrvault_audit_entries_total')})", "{{instance}}")],
                "Audit entries appended per second.",
            ),
            timeseries(
                "Audit trail damaged",
                "none",
                [target(sel("cdrvault_audit_damaged"), "{{instance}}")],
                "Must stay at 0: at 1 audited actions are refused.",
                style="steps",
                thresholds=MUST_BE_ZERO,
            ),
            timeseries(
                "Audit write failures",
                "short",
                [target(f"sum by (instance) ({increase('cdrvault_audit_write_failures_total')})", "{{instance}}")],
                "Audit appends that failed per interval: each refused or stopped an audited action. Must stay at 0.",
                thresholds=MUST_BE_ZERO,
            ),
        ],
    )


def process():
    available = sel("cdrvault_storage_available_bytes")
    capacity = sel("cdrvault_storage_capacity_bytes")
    # Seconds until `available` reaches 0 on the straight line fitted over
    # the last 6 hours: the value of the line now, divided by how much it
    # falls per day (at least a byte, so that a volume that does not fill
    # divides by 1), capped at a year: a year means "a year or more".
    now_on_line = f"predict_linear({available}[6h], 0)"
    in_a_day = f"predict_linear({available}[6h], 86400)"
    time_to_full = f"clamp(({now_on_line} / clamp_min({now_on_line} - {in_a_day}, 1)) * 86400, 0, 365 * 86400)"
    return dashboard(
        "process",
        "Process and storage",
        "CPU, memory and file descriptors of each process, and the filesystems of the data, state and keys directories.",
        [
            row("Overview"),
            stat(
                "Uptime (shortest)",
                "s",
                [f"min(time() - {sel('process_start_time_seconds')})"],
                "Time since the most recently started instance started.",
            ),
            stat(
                "CPU (busiest)",
                "percentunit",
                [f"max({rate('process_cpu_seconds_total')})"],
                "CPU time per second of the busiest instance; 100% is one core.",
            ),
            stat(
                "Resident memory (largest)",
                "bytes",
                [f"max({sel('process_resident_memory_bytes')})"],
                "Resident memory of the largest instance.",
            ),
            stat(
                "File descriptors used (highest)",
                "percentunit",
                [f"max({sel('process_open_fds')} / {sel('process_max_fds')})"],
                "Open file descriptors as a share of the limit, highest instance.",
                thresholds=FILLING,
            ),
            stat(
                "Storage used (fullest volume)",
                "percentunit",
                [f"max(1 - {available} / {capacity})"],
                "Used share of the fullest of the data, state and keys filesystems.",
                thresholds=FILLING,
            ),
            stat(
                "Time to full (soonest)",
                "s",
                [f"min({time_to_full})"],
                "Predicted by predict_linear over the last 6 hours, capped at a year (a year means a year or more).",
                thresholds=TIME_TO_FULL,
                no_value="over a year",
            ),
            row("Process"),
            timeseries(
                "CPU",
                "percentunit",
                [target(rate("process_cpu_seconds_total"), "{{instance}}")],
                "CPU time per second; 100% is one core.",
                w=8,
            ),
            timeseries(
                "Resident memory",
                "bytes",
                [target(sel("process_resident_memory_bytes"), "{{instance}}")],
                "Resident set size per instance.",
                w=8,
            ),
            timeseries(
                "Open file descriptors and limit",
                "none",
                [
                    target(sel("process_open_fds"), "{{instance}} open"),
                    target(sel("process_max_fds"), "{{instance}} limit"),
                ],
                "Open file descriptors against the process's limit.",
                w=8,
            ),
            row("Storage"),
            timeseries(
                "Storage available and capacity",
                "bytes",
                [
                    target(available, "{{instance}} {{volume}} available"),
                    target(capacity, "{{instance}} {{volume}} capacity"),
                ],
                "Per volume: data (Parquet), state (audit trail, registry, sealed results) and keys.",
                w=8,
            ),
            timeseries(
                "Storage used",
                "percentunit",
                [target(f"1 - {available} / {capacity}", "{{instance}} {{volume}}")],
                "Used share of each volume's filesystem.",
                w=8,
                thresholds=FILLING,
            ),
            timeseries(
                "Predicted time to full",
                "s",
                [target(time_to_full, "{{instance}} {{volume}}")],
                "predict_linear over the last 6 hours, capped at a year (a year means a year or more).",
                w=8,
                thresholds=TIME_TO_FULL,
            ),
        ],
    )


DASHBOARDS = {
    "ingest.json": ingest,
    "retention.json": retention,
    "compaction.json": compaction,
    "access.json": access,
    "process.json": process,
}


def render(board):
    """The text of a dashboard file, as committed."""
    return json.dumps(board, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_all():
    """File name to file text, for every dashboard."""
    return {name: render(build()) for name, build in DASHBOARDS.items()}


def main():
    DASHBOARD_DIR.mkdir(exist_ok=True)
    for name, text in render_all().items():
        path = DASHBOARD_DIR / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(HERE.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
