#!/usr/bin/env bash
# The test command: installs what the tests need (the Tansu broker from
# crates.io, pyarrow and DuckDB from PyPI as the independent Parquet
# readers, Spark (pyspark and a JRE) for the analyst's checks, Prometheus,
# amtool and SoftHSM2 from Debian; the deploy checks install their own
# tools), checks everything in deploy/ (rules, dashboards, manifests,
# compose file, systemd units, the container image), starts the broker on
# 127.0.0.1, and runs the whole test suite against it.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/kafka-broker.sh install
if ! python3 -c "import pyarrow, duckdb" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "pyarrow>=15" "duckdb>=1.1"
fi
# Spark in a virtualenv of its own (about a minute on first use, 1 GB):
# tests/cli.rs runs scripts/generic-tools.py --spark with this python over
# the demo's dataset.
CDRVAULT_SPARK_PYTHON=$(scripts/install-spark.sh)
export CDRVAULT_SPARK_PYTHON

# Debian's prometheus: promtool checks the alerting rules, and the server
# is the real Prometheus of tests/prometheus.rs; amtool (Debian's
# prometheus-alertmanager) checks the Alertmanager example; SoftHSM2
# (Debian's softhsm2) is the HSM of the PKCS#11 key custody tests.
missing=()
{ command -v promtool >/dev/null && command -v prometheus >/dev/null; } || missing+=(prometheus)
command -v amtool >/dev/null || missing+=(prometheus-alertmanager)
{ command -v softhsm2-util >/dev/null && [ -e /usr/lib/softhsm/libsofthsm2.so ]; } || missing+=(softhsm2)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
python3 -c "import yaml" 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check pyyaml

# The deployment files, offline: the alerting rules and their unit tests,
# the PrometheusRule and the Alertmanager routes (deploy/prometheus); the
# Grafana dashboards are what deploy/grafana/generate.py writes and every
# panel query parses (tests/prometheus.rs then runs each against a real
# Prometheus); the kustomize base and overlay render and validate against
# Kubernetes' schemas, and compose.yaml against the Compose schema (its
# tools go into a virtualenv under ~/.cache/cdrvault on first use). The
# manifests' configuration is also loaded by the binary, so the tests are
# built first (their build makes target/debug/cdrvault).
deploy/prometheus/check.sh
python3 deploy/grafana/check.py --strict
cargo test --locked --no-run
deploy/kubernetes/check.sh
# The systemd units (systemd-analyze verify, the offline security score,
# the system calls the binary makes against the units' filter, the evidence
# the verification timers keep), and the container image built without a
# registry: a debootstrap base, the tests' debug binary stripped, the
# Dockerfile's smoke test, then a run of `serve` in the container where this
# machine allows containers to run (the script says what it could do).
deploy/systemd/check.sh --binary target/debug/cdrvault
deploy/image/build.sh --binary target/debug/cdrvault

PORT=${CDRVAULT_TEST_BROKER_PORT:-19092}
scripts/kafka-broker.sh start "$PORT"
trap "scripts/kafka-broker.sh stop $PORT" EXIT
export CDRVAULT_TEST_BROKERS="127.0.0.1:${PORT}"

cargo test --locked "$@"
