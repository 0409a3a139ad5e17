#!/usr/bin/env bash
# The large chaos run, for operators and benchmarks: the tests of
# tests/chaos.rs (kill -9 at random moments; several instances with
# rebalances and one stalled past its session timeout) over 100,000 records
# and 100 kills, against a release build and a broker of its own.
#
#   scripts/chaos.sh                      the whole run
#   scripts/chaos.sh kill_9               one test (a cargo test filter)
#
# Environment (all optional):
#   CDRVAULT_CHAOS_RECORDS      records per test (default 100000)
#   CDRVAULT_CHAOS_KILLS        kills of the kill test; the stall test runs
#                               a fifth of it in churn rounds (default 100)
#   CDRVAULT_CHAOS_SEED         replay a run (each test prints its seed)
#   CDRVAULT_CHAOS_KEEP=1       keep each test's directory (data, logs)
#   CDRVAULT_CHAOS_BROKER_PORT  the broker's port on 127.0.0.1 (default 19093)
set -euo pipefail
cd "$(dirname "$0")/.."

export CDRVAULT_CHAOS_RECORDS=${CDRVAULT_CHAOS_RECORDS:-100000}
export CDRVAULT_CHAOS_KILLS=${CDRVAULT_CHAOS_KILLS:-100}
PORT=${CDRVAULT_CHAOS_BROKER_PORT:-19093}

if ! python3 -c "import pyarrow" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "pyarrow>=15"
fi
cargo build --release --locked --bin cdrvault --test chaos

scripts/kafka-broker.sh start "$PORT"
trap 'scripts/kafka-broker.sh stop "$PORT"' EXIT
export CDRVAULT_TEST_BROKERS="127.0.0.1:${PORT}"

log=$(mktemp "${TMPDIR:-/tmp}/cdrvault-chaos-XXXXXX.log")
echo "chaos: ${CDRVAULT_CHAOS_RECORDS} records, ${CDRVAULT_CHAOS_KILLS} kills; full output in $log" >&2
status=0
# One test at a time (they also serialise themselves): each runs several
# instances of the service and would otherwise measure the other.
cargo test --release --locked --test chaos -- --nocapture --test-threads 1 "$@" 2>&1 | tee "$log" || status=$?

echo
echo "== chaos summary =="
grep -E "seed [0-9]+ \(replay|summary:|^test .* \.\.\. |^test result:" "$log" || true
exit "$status"
