#!/usr/bin/env bash
# A real Kafka-protocol broker for the end-to-end tests: Tansu, from
# crates.io, with in-memory storage, listening on 127.0.0.1 only.
#
#   scripts/kafka-broker.sh install        install tansu into ~/.cargo/bin (cached)
#   scripts/kafka-broker.sh start PORT     start it in the background, wait until it answers
#   scripts/kafka-broker.sh stop PORT      stop the broker started by `start PORT`
set -euo pipefail

TANSU_VERSION=0.6.0
STATE_BASE=${CDRVAULT_BROKER_STATE:-${TMPDIR:-/tmp}/cdrvault-broker}
TANSU=${CARGO_HOME:-$HOME/.cargo}/bin/tansu

install() {
  if [[ -x "$TANSU" ]] && "$TANSU" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return 0
  fi
  echo "installing tansu $TANSU_VERSION (memory storage) into $(dirname "$TANSU")" >&2
  cargo install tansu --version "$TANSU_VERSION" --features dynostore --locked --quiet
}

start() {
  local port=${1:?usage: start PORT}
  # One state directory per port: brokers on other ports are left alone.
  STATE_DIR="$STATE_BASE-$port"
  install
  mkdir -p "$STATE_DIR"
  stop "$port" >/dev/null 2>&1 || true
  if (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
    echo "port 127.0.0.1:${port} is already taken; choose another (CDRVAULT_TEST_BROKER_PORT)" >&2
    return 1
  fi
  "$TANSU" broker \
    --listener-url "tcp://127.0.0.1:${port}" \
    --advertised-listener-url "tcp://127.0.0.1:${port}" \
    --storage-engine "memory://tansu/" \
    >"$STATE_DIR/broker.log" 2>&1 &
  echo $! >"$STATE_DIR/broker.pid"
  # Wait (bounded) until the listener accepts connections.
  for _ in $(seq 1 100); do
    # Our own broker must still be alive before its port counts.
    if ! kill -0 "$(cat "$STATE_DIR/broker.pid")" 2>/dev/null; then
      cat "$STATE_DIR/broker.log" >&2
      echo "tansu broker exited during start-up" >&2
      return 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
      echo "tansu broker listening on 127.0.0.1:${port} (pid $(cat "$STATE_DIR/broker.pid"))" >&2
      return 0
    fi
    sleep 0.1
  done
  echo "tansu broker did not answer on 127.0.0.1:${port} within 10s" >&2
  return 1
}

stop() {
  local port=${1:?usage: stop PORT}
  STATE_DIR="$STATE_BASE-$port"
  if [[ -f "$STATE_DIR/broker.pid" ]]; then
    local pid
    pid=$(cat "$STATE_DIR/broker.pid")
    kill "$pid" 2>/dev/null || true
    # Wait (bounded) until it is gone, so that its port is free again.
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    rm -f "$STATE_DIR/broker.pid"
  fi
}

case "${1:-}" in
  install) install ;;
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  *) echo "usage: $0 install|start PORT|stop PORT" >&2; exit 2 ;;
esac
