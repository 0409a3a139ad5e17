#!/usr/bin/env bash
# The test command: installs what the tests need (the Tansu broker from
# crates.io, pyarrow from PyPI as the independent Parquet reader, promtool
# from Debian's prometheus package), checks the shipped alerting rules,
# starts the broker on 127.0.0.1, and runs the whole test suite against it.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/kafka-broker.sh install
if ! python3 -c "import pyarrow" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "pyarrow>=15"
fi

if ! command -v promtool >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
(cd deploy/prometheus && promtool check rules alerts.yml && promtool test rules alerts.test.yml)

PORT=${CDRVAULT_TEST_BROKER_PORT:-19092}
scripts/kafka-broker.sh start "$PORT"
trap "scripts/kafka-broker.sh stop $PORT" EXIT
export CDRVAULT_TEST_BROKERS="127.0.0.1:${PORT}"

cargo test --locked "$@"
