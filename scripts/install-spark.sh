#!/usr/bin/env bash
# Installs what `scripts/generic-tools.py --spark` needs, and prints (alone on
# stdout) the python to run it with:
#
#     PY=$(scripts/install-spark.sh)
#     "$PY" scripts/generic-tools.py --spark DATA_DIR
#
# - a headless JRE (17 or later, as PySpark 4 needs) from Debian, only if
#   `java` is missing or older: default-jre-headless, else
#   openjdk-17-jre-headless;
# - a venv at ~/.cache/cdrvault/spark-venv with pyspark, pyarrow and duckdb
#   (pinned below) from PyPI, only if it does not already import them at
#   those versions.
#
# Idempotent: a second run changes nothing and takes about a second. Each step
# that runs says on stderr how long it took (measured on a 2-core machine: apt
# 7-14 s for 25 packages, ~280 MB; pip 47-58 s, the venv 757 MB). pip keeps no
# cache: pyspark is a 456 MB sdist built into a wheel here, in
# ~/.cache/cdrvault/tmp (2.6 GB at the peak), removed afterwards.
# CDRVAULT_CACHE moves ~/.cache/cdrvault.
set -euo pipefail

PYSPARK_VERSION=4.3.0
PYARROW_VERSION=26.0.1
DUCKDB_VERSION=2.0.1

cache=${CDRVAULT_CACHE:-$HOME/.cache/cdrvault}
venv=$cache/spark-venv
python=${PYTHON:-python3}

say() { echo "install-spark: $*" >&2; }

# Major version of the `java` on PATH, or 0 if there is none.
java_major() {
    command -v java >/dev/null 2>&1 || { echo 0; return; }
    java -version 2>&1 | sed -n 's/.*version "\([0-9]*\)\(\.[0-9]*\)*.*/\1/p' | head -n 1
}

# Seconds since $1 (a `date +%s.%N`), to a tenth.
since() { awk -v start="$1" -v now="$(date +%s.%N)" 'BEGIN { printf "%.1f", now - start }'; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# 1. A headless JRE.
if [ "$(java_major)" -ge 17 ]; then
    say "java $(java_major) is there: no apt step"
else
    start=$(date +%s.%N)
    as_root apt-get update -qq >&2
    # default-jre-headless (2:1.17-74, OpenJDK 17, on bookworm) unless this
    # release's default is older than 17 or missing: then 17 by name.
    default=$(apt-cache policy default-jre-headless | sed -n 's/.*Candidate: [0-9]*:1\.\([0-9]*\).*/\1/p')
    if [ "${default:-0}" -ge 17 ]; then
        package="default-jre-headless"
    else
        package="openjdk-17-jre-headless"
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >&2
    say "apt: $package installed in $(since "$start") s"
    [ "$(java_major)" -ge 17 ] || { say "java 17 or later is still missing"; exit 1; }
fi

# 2. The venv.
wanted="pyspark==$PYSPARK_VERSION pyarrow==$PYARROW_VERSION duckdb==$DUCKDB_VERSION"
have() {
    [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$PYSPARK_VERSION" "$PYARROW_VERSION" "$DUCKDB_VERSION" <<'EOF' 2>/dev/null
import sys
import duckdb, pyarrow, pyspark
sys.exit([pyspark.__version__, pyarrow.__version__, duckdb.__version__] != sys.argv[1:])
EOF
}
if have; then
    say "$venv already has $wanted: no pip step"
else
    start=$(date +%s.%N)
    mkdir -p "$cache/tmp"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    # shellcheck disable=SC2086
    TMPDIR=$cache/tmp "$venv/bin/python" -m pip install -q --no-cache-dir --disable-pip-version-check $wanted >&2
    rm -rf "$cache/tmp"
    have || { say "$venv still lacks $wanted"; exit 1; }
    say "pip: $wanted installed in $(since "$start") s ($(du -sh "$venv" | cut -f1) in $venv)"
fi

echo "$venv/bin/python"
