#!/usr/bin/env bash
# What a handler waits for through the lawful-access API, and the fsyncs a
# call costs: `benches/api_e2e.py` against `cdrvault access serve` on
# 127.0.0.1, over DAYS days of imported records (RECORDS a day, SUBSCRIBERS
# numbers, TARGETS of them asked for, one per request, ROUNDS rounds; the
# first round warms the caches and is not counted).
#
#   benches/api_e2e.sh                              this checkout (release)
#   CDRVAULT_BIN=/abs/path/cdrvault benches/api_e2e.sh    a binary built before
#   DATA_CACHE=/abs/dir benches/api_e2e.sh    imports into DIR once, then
#                       starts every later run from a copy of it (same data
#                       for each build of an A/B; delete DIR after a change
#                       of the file format or of DAYS, RECORDS, SUBSCRIBERS)
#   ANCHORS=0 benches/api_e2e.sh              cdrvault only (no other engine)
#   HISTORY=200000 benches/api_e2e.sh         with that many earlier requests
#                       in the registry, as a year of requests leaves them
#   RUST_CLIENT=0 benches/api_e2e.sh          the Python client only (by
#                       default the two clients take turns, target by
#                       target, so each has half the calls: ROUNDS=9 and
#                       TARGETS=50 give 200 each)
#
# Prints RESULT lines: p50 and p99 of SubmitRequest, FetchResult and both,
# of the same question to DuckDB over a zstd Parquet of the same records in
# clear (OR and UNION forms), to chDB over that file and over a MergeTree
# sorted by calling number with a bloom-filter index on called number
# (UNION form), and to DataFusion over the file (UNION form), interleaved
# target by target, every answer checked against
# the truth; their ratios to cdrvault's; cdrvault through two clients
# taking turns (Python grpcio, and cdrvault's own Rust client,
# benches/api_client.rs, built from this checkout); then the fsyncs per
# submit+fetch pair (a second pass with strace attached
# to the server; strace is installed with apt if missing). Needs grpcio and
# grpcio-tools, duckdb, chdb and datafusion (installed with pip if missing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DAYS=${DAYS:-30}
RECORDS=${RECORDS:-20000}
SUBSCRIBERS=${SUBSCRIBERS:-20000}
TARGETS=${TARGETS:-20}
ROUNDS=${ROUNDS:-5}
PORT=${PORT:-29551}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

python3 -c "import grpc, grpc_tools, duckdb, chdb, datafusion" 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check grpcio grpcio-tools duckdb chdb datafusion
command -v strace >/dev/null || { apt-get update -qq && apt-get install -y -qq strace >/dev/null; }
if [[ -n "${CDRVAULT_BIN:-}" ]]; then
  bin=$CDRVAULT_BIN
else
  (cd "$ROOT" && cargo build --release --quiet --bin cdrvault)
  bin=$CARGO_TARGET_DIR/release/cdrvault
fi

rust_client=()
if [[ "${RUST_CLIENT:-1}" != 0 ]]; then
  # Built from this checkout whatever the server's binary: the API is the
  # same proto.
  client_bin=$(cd "$ROOT" && cargo build --release --quiet --bench api_client --message-format=json \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "api_client" and m.get("executable"):
        print(m["executable"])')
  rust_client=(--rust-client "$client_bin")
fi

if [[ -n "${DATA_CACHE:-}" ]]; then
  # The audit trail's signed head is bound to where the trail lies: every
  # run from the cache works in the same place.
  work=${DATA_CACHE%/}.work
  rm -rf "$work" && mkdir -p "$work"
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/cdrvault-api.XXXXXX")
fi
server_pid=""
cleanup() {
  [[ -n "$server_pid" ]] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  [[ -n "${KEEP_WORK:-}" ]] || rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/cdrvault.toml" <<TOML
[storage]
data_dir = "$work/data"
[keys]
dir = "$work/keys"
[state]
dir = "$work/state"
[access]
listen = "127.0.0.1:$PORT"
requests_per_minute = 0
TOML
cv() { "$bin" --config "$work/cdrvault.toml" "$@"; }
if [[ -n "${DATA_CACHE:-}" && -f "${DATA_CACHE}/ready" ]]; then
  echo "reusing the data of $DATA_CACHE" >&2
  cp -a "$DATA_CACHE"/. "$work"/
  rm "$work/ready"
else
  # Records: SUBSCRIBERS numbers, RECORDS a day over the last DAYS days; the
  # targets are the first TARGETS numbers.
  python3 - "$work" "$DAYS" "$RECORDS" "$SUBSCRIBERS" "$TARGETS" <<'PY'
import datetime, json, random, sys
work, days, per_day, subscribers, targets = sys.argv[1], *map(int, sys.argv[2:])
rng = random.Random(7)
numbers = [f"+4520{n:06d}" for n in range(subscribers)]
today = datetime.datetime.now(datetime.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
with open(f"{work}/records.jsonl", "w") as out:
    for d in range(1, days + 1):
        day = today - datetime.timedelta(days=d)
        for i in range(per_day):
            start = day + datetime.timedelta(seconds=rng.randrange(86400))
            out.write(json.dumps({"record_id": f"r-{d}-{i}", "service": "voice",
                                  "start_time": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "duration_ms": 60000,
                                  "calling_number": rng.choice(numbers), "called_number": rng.choice(numbers)}) + "\n")
with open(f"{work}/targets.txt", "w") as out:
    out.write("".join(f"msisdn:{n}\n" for n in numbers[:targets]))
PY
  # The anchor: the same records in clear, as an analyst would write them with
  # DuckDB (zstd Parquet), and the truth: each target's records in the window.
  python3 - "$work" "$TARGETS" <<'PY'
import duckdb, json, sys
work, targets = sys.argv[1], int(sys.argv[2])
con = duckdb.connect()
con.execute(f"""COPY (SELECT record_id, service, start_time::TIMESTAMP AS start_time, duration_ms, calling_number,
                called_number FROM read_json('{work}/records.jsonl', format = 'newline_delimited'))
                TO '{work}/plain.parquet' (FORMAT parquet, COMPRESSION zstd)""")
numbers = [line.strip().split(":", 1)[1] for line in open(f"{work}/targets.txt")]
truth = {f"msisdn:{n}": con.execute(f"SELECT count(*) FROM '{work}/plain.parquet' WHERE calling_number = ? "
                                    "OR called_number = ?", [n, n]).fetchone()[0] for n in numbers}
json.dump(truth, open(f"{work}/truth.json", "w"))
PY

  cv keys init >/dev/null
  echo "importing $((DAYS * RECORDS)) records" >&2
  cv import "$work/records.jsonl" >/dev/null
  cv compact >/dev/null
  if [[ -n "${DATA_CACHE:-}" ]]; then
    mkdir -p "$DATA_CACHE"
    cp -a "$work"/. "$DATA_CACHE"/
    rm "$DATA_CACHE/records.jsonl"
    touch "$DATA_CACHE/ready"
  fi
fi
cv access bootstrap | awk '{ print $NF }' >"$work/admin.token"
chmod 600 "$work/admin.token"
(cd "$work" && exec "$bin" --config "$work/cdrvault.toml" access serve) >"$work/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done

client() { local token=$1; shift; "$bin" "$@" --server "http://127.0.0.1:$PORT" --token-file "$work/$token.token"; }
token_of() { awk '/token/ { print $NF }' | tail -1; }
client admin authority create --country dk --name Police dk-police >/dev/null
client admin principal create --name reviewer-1 --person p1 --role legal_reviewer | token_of >"$work/r1.token"
client admin principal create --name reviewer-2 --person p2 --role legal_reviewer | token_of >"$work/r2.token"
client admin principal create --name handler --person p3 --role authority_handler --authority dk-police \
  | token_of >"$work/handler.token"
chmod 600 "$work"/*.token
from=$(date -u -d "-$((DAYS + 1)) days" +%Y-%m-%dT00:00:00Z)
to=$(date -u +%Y-%m-%dT00:00:00Z)
until=$(date -u -d "+30 days" +%Y-%m-%dT00:00:00Z)
warrant=$(client r1 warrant register --authority dk-police --reference K-1 --issued-by "City Court" \
  --legal-basis "Code § 1" --targets-file "$work/targets.txt" --period-start "$from" --period-end "$to" \
  --category traffic --valid-until "$until" | awk '/^warrant / { sub(":", "", $2); print $2 }' | head -1)
client r2 warrant approve "$warrant" >/dev/null
echo "warrant $warrant approved; $TARGETS targets over $DAYS days" >&2
# HISTORY=N: N requests answered before (their results long destroyed), as
# a year of an authority's requests leaves them in the registry.
if [[ "${HISTORY:-0}" -gt 0 ]]; then
  python3 - "$work/state/registry.sqlite" "$HISTORY" "$warrant" <<'PY'
import sqlite3, sys, time
db, n, warrant = sys.argv[1], int(sys.argv[2]), sys.argv[3]
con = sqlite3.connect(db, timeout=30)
now, year = int(time.time() * 1e6), 365 * 86400 * 10**6
con.executemany("INSERT INTO requests (request_id, authority_id, request_number, warrant_id, principal_id, status, "
                "submitted_at_us, records, format, sha256, bytes) "
                "VALUES (?, 'dk-police', ?, ?, 'history', 'answered', ?, 3, 'json', '', 100)",
                ((f"history-{i}", 10**9 + i, warrant, now - year + i * year // n) for i in range(n)))
con.commit()
PY
  echo "$HISTORY earlier requests in the registry" >&2
fi

args=(--server "127.0.0.1:$PORT" --token-file "$work/handler.token" --warrant "$warrant"
      --targets-file "$work/targets.txt" --from "$from" --to "$to")
anchors=(--plain "$work/plain.parquet" --chdb "$work/chdb")
[[ "${ANCHORS:-1}" == 0 ]] && anchors=()
python3 "$ROOT/benches/api_e2e.py" "${args[@]}" --rounds "$ROUNDS" --first-number 1 --label "${LABEL:-}" \
  "${anchors[@]}" "${rust_client[@]}" --truth "$work/truth.json" \
  | tee "$work/timing.out"
next=$(awk '/^next-number/ { print $2 }' "$work/timing.out")
python3 "$ROOT/benches/api_e2e.py" "${args[@]}" --rounds 1 --first-number "$next" --count-fsyncs "$server_pid" \
  --label "${LABEL:-}"
