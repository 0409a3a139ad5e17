#!/usr/bin/env bash
# The test command: installs what the tests need (the Tansu broker from
# crates.io, pyarrow from PyPI as the independent Parquet reader, Prometheus
# and SoftHSM2 from Debian), checks the shipped alerting rules and dashboards,
# starts the broker on 127.0.0.1, and runs the whole test suite against it.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/kafka-broker.sh install
if ! python3 -c "import pyarrow" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "pyarrow>=15"
fi

# Debian's prometheus: promtool checks the alerting rules, and the server
# is the real Prometheus of tests/prometheus.rs; SoftHSM2
# (Debian's softhsm2) is the HSM of the PKCS#11 key custody tests.
missing=()
{ command -v promtool >/dev/null && command -v prometheus >/dev/null; } || missing+=(prometheus)
{ command -v softhsm2-util >/dev/null && [ -e /usr/lib/softhsm/libsofthsm2.so ]; } || missing+=(softhsm2)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
(cd deploy/prometheus && promtool check rules cdrvault-rules.yml && promtool test rules cdrvault-rules.test.yml)
# The Grafana dashboards are what deploy/grafana/generate.py writes, are
# well-formed, and every panel query parses (tests/prometheus.rs then runs
# each against a real Prometheus).
python3 -c "import yaml" 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check pyyaml
python3 deploy/grafana/check.py --strict

PORT=${CDRVAULT_TEST_BROKER_PORT:-19092}
scripts/kafka-broker.sh start "$PORT"
trap "scripts/kafka-broker.sh stop $PORT" EXIT
export CDRVAULT_TEST_BROKERS="127.0.0.1:${PORT}"

cargo test --locked "$@"
