#!/usr/bin/env bash
# End-to-end ingest rate through a real Kafka-protocol broker.
#
# Starts a private Tansu broker (in-memory storage) on 127.0.0.1, fills topic
# `cdr` with COUNT synthetic records (`cdrvault produce`), then starts
# `cdrvault serve` on it and measures the time until /metrics shows
# cdrvault_ingest_records_received_total = COUNT. That counter moves only
# after a batch's Parquet files are durable and its offsets stored, so the
# figure is Kafka bytes -> durable Parquet. Then it stops the service with
# SIGTERM, and the broker on exit.
#
#   benches/e2e_broker.sh                      500k JSON records
#   COUNT=200000 FORMAT=protobuf benches/e2e_broker.sh
#
# Before serve, the same topic is read by a plain librdkafka consumer with
# no processing (benches/raw_read.rs; RAW=0 skips it), and the ratio of the
# two rates is printed.
#
# Environment: COUNT (500000), FORMAT (json|protobuf), PARTITIONS (2),
# BROKER_PORT (29092), HTTP_PORT (29464), DECODE_THREADS (0 = one per core),
# FETCH_QUEUE_KIB (16384, ingest.fetch_queue_kib), KAFKA_PROPERTIES (extra
# TOML lines for [kafka.properties], e.g. '"max.partition.fetch.bytes" = "8388608"'),
# KAFKA_SETTINGS (extra TOML lines for [kafka], e.g. 'static_membership = false':
# the test broker holds a static member's JoinGroup and SyncGroup 3 s each,
# so from process start a static member starts about 6 s later),
# PARQUET_SETTINGS (extra TOML lines for [parquet], e.g. 'zstd_level = 3'),
# CARGO_TARGET_DIR (the project's target/), CDRVAULT_BIN (a binary built
# before, e.g. of another revision, instead of building), TANSU (tansu on PATH or
# ~/.cargo/bin/tansu). Everything listens on 127.0.0.1 only. The ports must
# be free: the script refuses to share a broker with anyone else.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
COUNT=${COUNT:-500000}
FORMAT=${FORMAT:-json}
PARTITIONS=${PARTITIONS:-2}
BROKER_PORT=${BROKER_PORT:-29092}
HTTP_PORT=${HTTP_PORT:-29464}
DECODE_THREADS=${DECODE_THREADS:-0}
FETCH_QUEUE_KIB=${FETCH_QUEUE_KIB:-16384}
KAFKA_PROPERTIES=${KAFKA_PROPERTIES:-}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TANSU=${TANSU:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}
BROKER_URL="tcp://127.0.0.1:${BROKER_PORT}"
TOPIC=cdr
DEAD_LETTER=cdr.dead-letter

work=$(mktemp -d "${TMPDIR:-/tmp}/cdrvault-e2e.XXXXXX")
broker_pid=""
serve_pid=""

cleanup() {
  # Only the processes this script started, by their pid.
  if [[ -n "$serve_pid" ]] && kill -0 "$serve_pid" 2>/dev/null; then
    kill -TERM "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
  fi
  if [[ -n "$broker_pid" ]] && kill -0 "$broker_pid" 2>/dev/null; then
    kill -TERM "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
  fi
  if [[ -n "${KEEP_WORK:-}" ]]; then
    echo "kept $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
# CPU seconds (user + system) a process has used so far.
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"; }
listening() { ss -Hltn "sport = :$1" | grep -q .; }
owns_port() { ss -Hltnp "sport = :$1" | grep -q "pid=$2,"; }
metric() {
  # The value of one unlabelled metric, 0 if absent or unreachable.
  # (before serve listens, curl fails: that reads as 0, not as an error)
  { curl -fsS --max-time 2 "http://127.0.0.1:${HTTP_PORT}/metrics" 2>/dev/null || true; } \
    | awk -v name="$1" '$1 == name { print $2; found = 1 } END { if (!found) print 0 }'
}

for port in "$BROKER_PORT" "$HTTP_PORT"; do
  if listening "$port"; then
    echo "port $port on 127.0.0.1 is in use; set BROKER_PORT/HTTP_PORT to free ports" >&2
    exit 1
  fi
done
[[ -x "$TANSU" ]] || { echo "tansu not found (scripts/kafka-broker.sh install)" >&2; exit 1; }

if [[ -n "${CDRVAULT_BIN:-}" ]]; then
  bin=$CDRVAULT_BIN
else
  echo "building cdrvault (release) into $CARGO_TARGET_DIR" >&2
  (cd "$ROOT" && cargo build --release --quiet --bin cdrvault)
  bin="$CARGO_TARGET_DIR/release/cdrvault"
fi

"$TANSU" broker \
  --listener-url "$BROKER_URL" \
  --advertised-listener-url "$BROKER_URL" \
  --storage-engine "memory://tansu/" \
  >"$work/broker.log" 2>&1 &
broker_pid=$!
for _ in $(seq 1 100); do
  owns_port "$BROKER_PORT" "$broker_pid" && break
  kill -0 "$broker_pid" 2>/dev/null || { cat "$work/broker.log" >&2; echo "broker exited" >&2; exit 1; }
  sleep 0.1
done
owns_port "$BROKER_PORT" "$broker_pid" || { echo "broker did not listen within 10s" >&2; exit 1; }
"$TANSU" topic create "$TOPIC" --broker "$BROKER_URL" --partitions "$PARTITIONS" >/dev/null
"$TANSU" topic create "$DEAD_LETTER" --broker "$BROKER_URL" --partitions 1 >/dev/null

"$bin" keys init --dir "$work/keys" --data-dir "$work/data" >/dev/null
cat >"$work/cdrvault.toml" <<EOF
[storage]
data_dir = "$work/data"

[keys]
dir = "$work/keys"

[state]
dir = "$work/state"

[kafka]
brokers = "127.0.0.1:${BROKER_PORT}"
group_id = "cdrvault-bench"
${KAFKA_SETTINGS:-}
dead_letter_topic = "$DEAD_LETTER"
topics = [{ name = "$TOPIC", encoding = "$FORMAT" }]

[kafka.properties]
$KAFKA_PROPERTIES

[ingest]
decode_threads = $DECODE_THREADS
fetch_queue_kib = $FETCH_QUEUE_KIB

[parquet]
${PARQUET_SETTINGS:-}

[http]
listen = "127.0.0.1:${HTTP_PORT}"

[log]
format = "json"
filter = "info"
EOF

echo "producing $COUNT $FORMAT records into $TOPIC ($PARTITIONS partitions)" >&2
t0=$(now)
"$bin" produce --brokers "127.0.0.1:${BROKER_PORT}" --topic "$TOPIC" --count "$COUNT" --format "$FORMAT" \
  >"$work/produce.out" 2>"$work/produce.err"
t1=$(now)
cat "$work/produce.out" >&2

# The baseline, same topic, same run: a plain librdkafka read with no
# processing (benches/raw_read.rs). RAW=0 skips it.
raw_rate=""
if [[ "${RAW:-1}" != 0 ]]; then
  echo "raw read of the same topic (benches/raw_read.rs)" >&2
  (cd "$ROOT" && cargo bench --quiet --bench raw_read -- --brokers "127.0.0.1:${BROKER_PORT}" --topic "$TOPIC" \
    --partitions "$PARTITIONS" --count "$COUNT") >"$work/raw.out" 2>"$work/raw.err" \
    || { cat "$work/raw.err" >&2; echo "raw read failed" >&2; exit 1; }
  cat "$work/raw.out" >&2
  raw_rate=$(awk '/^RESULT raw/ { print $(NF - 1) }' "$work/raw.out")
fi

echo "serving until cdrvault_ingest_records_received_total reaches $COUNT" >&2
start=$(now)
# From the work directory, so that no default relative path lands elsewhere.
(cd "$work" && exec "$bin" --config "$work/cdrvault.toml" serve) >"$work/serve.log" 2>&1 &
serve_pid=$!
broker_cpu_start=$(cpu_seconds "$broker_pid")
first_at=""
first_value=0
deadline=$(( $(date +%s) + 600 ))
while :; do
  received=$(metric cdrvault_ingest_records_received_total)
  received=${received%.*}
  if [[ -z "$first_at" && "$received" -gt 0 ]]; then
    first_at=$(now)
    first_value=$received
  fi
  if [[ "$received" -ge "$COUNT" ]]; then
    done_at=$(now)
    break
  fi
  if ! kill -0 "$serve_pid" 2>/dev/null; then
    tail -20 "$work/serve.log" >&2
    echo "cdrvault serve exited early" >&2
    exit 1
  fi
  if [[ $(date +%s) -ge $deadline ]]; then
    echo "timed out at $received records" >&2
    exit 1
  fi
  sleep 0.05
done
serve_cpu=$(cpu_seconds "$serve_pid")
broker_cpu=$(awk -v a="$(cpu_seconds "$broker_pid")" -v b="$broker_cpu_start" 'BEGIN { print a - b }')
written=$(metric cdrvault_ingest_records_written_total)
batches=$(metric cdrvault_ingest_batches_total)

stop_at=$(now)
kill -TERM "$serve_pid"
serve_status=0
wait "$serve_pid" || serve_status=$?
stopped_at=$(now)
serve_pid=""

files=$(find "$work/data" -name '*.parquet' | wc -l)
bytes=$(find "$work/data" -name '*.parquet' -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
# Sum of the per-batch processing times the service logged ("batch durable").
busy_ms=$(grep -o '"elapsed_ms":[0-9]*' "$work/serve.log" | awk -F: '{ s += $2 } END { print s + 0 }')
# When the group gave the service its partitions: the broker's join hold
# (Tansu holds a static member's JoinGroup and SyncGroup 3 s each) ends there.
assigned_ts=$(grep -m1 '"partitions assigned, claimed' "$work/serve.log" | grep -o '"timestamp":"[^"]*"' | cut -d'"' -f4 || true)
assigned_at=$([ -n "$assigned_ts" ] && date -d "$assigned_ts" +%s.%N || echo "")

awk -v count="$COUNT" -v t0="$t0" -v t1="$t1" -v start="$start" -v first="$first_at" -v fv="$first_value" \
    -v done_at="$done_at" -v stop="$stop_at" -v stopped="$stopped_at" -v written="$written" -v batches="$batches" \
    -v files="$files" -v bytes="$bytes" -v busy="$busy_ms" -v status="$serve_status" -v fmt="$FORMAT" \
    -v parts="$PARTITIONS" -v serve_cpu="$serve_cpu" -v broker_cpu="$broker_cpu" -v cores="$(nproc)" \
    -v raw="$raw_rate" -v assigned="$assigned_at" 'BEGIN {
  total = done_at - start
  printf "produce:   %d %s records in %.2f s (%.0f records/s)\n", count, fmt, t1 - t0, count / (t1 - t0)
  printf "serve:     %d records received, %d written, %d batches, %d files, %.1f MiB (%.1f B/record)\n", \
    count, written, batches, files, bytes / 1048576, bytes / count
  printf "           start -> first durable batch (%d records): %.2f s\n", fv, first - start
  printf "           processing time logged by the batches: %.2f s\n", busy / 1000
  printf "           CPU while serving: cdrvault %.2f s, broker %.2f s (%d cores: %.2f core-s available)\n", \
    serve_cpu, broker_cpu, cores, cores * total
  printf "           SIGTERM -> exit: %.2f s, exit status %d\n", stopped - stop, status
  printf "RESULT e2e %d records in %.2f s from process start: %.0f records/s\n", count, total, count / total
  if (assigned > start && done_at > assigned)
    printf "RESULT e2e from the partitions assigned (%.2f s after start): %.0f records/s\n", \
      assigned - start, count / (done_at - assigned)
  if (done_at > first && count > fv)
    printf "RESULT e2e steady state (after the first batch): %.0f records/s\n", (count - fv) / (done_at - first)
  printf "RESULT e2e CPU: %.2f cdrvault core-seconds per million records\n", serve_cpu * 1e6 / count
  if (raw > 0) {
    printf "RESULT raw read of the same topic: %.0f records/s\n", raw
    printf "RESULT ratio e2e / raw read: %.2f from process start", (count / total) / raw
    if (assigned > start && done_at > assigned)
      printf ", %.2f from the partitions assigned", (count / (done_at - assigned)) / raw
    if (done_at > first && count > fv)
      printf ", %.2f in steady state", ((count - fv) / (done_at - first)) / raw
    printf "\n"
  }
}'
