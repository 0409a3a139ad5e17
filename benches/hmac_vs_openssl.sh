#!/usr/bin/env bash
# HMAC per identifier against `openssl speed -hmac sha256` on 16-byte inputs,
# measured in the same run.
#
# Runs, alternately, ROUNDS times each: openssl speed (wall-clock time,
# -elapsed, so that both sides use the same divisor) and the `hmac` bench
# target (benches/hmac.rs), which times N calls of Tokeniser::token and, as
# a control, ring's hmac::sign over a 16-byte message. Prints the best round
# of each side by side. Single-threaded on both sides.
#
#   benches/hmac_vs_openssl.sh
#   ROUNDS=3 SECONDS_PER_RUN=3 TOKENS=10000000 benches/hmac_vs_openssl.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-2}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-3}
TOKENS=${TOKENS:-10000000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

echo "building the hmac bench target" >&2
# Build once and run the executable itself, so that no round pays for a
# rebuild (or is skewed by one) when the sources change meanwhile.
bench_bin=$(cd "$ROOT" && cargo bench --bench hmac --no-run 2>&1 | sed -n 's|.*Executable benches/hmac.rs (\(.*\))|\1|p')
[[ -x "$bench_bin" ]] || { echo "could not build the hmac bench target" >&2; exit 1; }

best_openssl=0
best_token=0
best_ring=0
max() { awk -v a="$1" -v b="$2" 'BEGIN { print (b > a) ? b : a }'; }

for round in $(seq 1 "$ROUNDS"); do
  # -mr: machine-readable; "+R:<count>:hmac(sha256):<seconds>" per size,
  # printed on stderr.
  line=$(openssl speed -mr -elapsed -seconds "$SECONDS_PER_RUN" -bytes 16 -hmac sha256 2>&1 | grep '^+R:')
  ops=$(awk -F: '{ printf "%.0f", $2 / $4 }' <<<"$line")
  echo "round $round: openssl speed -hmac sha256 -bytes 16: $ops ops/s" >&2
  best_openssl=$(max "$best_openssl" "$ops")

  out=$("$bench_bin" --bench "$TOKENS")
  token=$(awk '$1 == "RESULT" && $2 == "tokenise" { sub("ops_per_s=", "", $4); print $4 }' <<<"$out")
  ring=$(awk '$1 == "RESULT" && $2 == "ring_hmac16" { sub("ops_per_s=", "", $4); print $4 }' <<<"$out")
  echo "round $round: Tokeniser::token: $token ops/s; ring hmac 16 B: $ring ops/s" >&2
  best_token=$(max "$best_token" "$token")
  best_ring=$(max "$best_ring" "$ring")
done

awk -v o="$best_openssl" -v t="$best_token" -v r="$best_ring" -v v="$(openssl version | awk '{ print $1 " " $2 }')" 'BEGIN {
  printf "\nbest of the rounds, one core, wall-clock\n"
  printf "%-52s %14s %10s\n", "", "ops/s", "ns/op"
  printf "%-52s %14.0f %10.1f\n", "openssl speed -hmac sha256 -bytes 16 (" v ")", o, 1e9 / o
  printf "%-52s %14.0f %10.1f\n", "cdrvault Tokeniser::token (MSISDN)", t, 1e9 / t
  printf "%-52s %14.0f %10.1f\n", "ring hmac::sign, 16-byte message (control)", r, 1e9 / r
  printf "RESULT tokenise/openssl = %.2f (target >= 1.00: %s)\n", t / o, (t >= o) ? "met" : "MISSED"
}'
