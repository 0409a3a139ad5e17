#!/usr/bin/env bash
# Checks the systemd units of deploy/systemd offline: nothing here needs
# systemd running as PID 1, so it runs in a container or CI.
#
#   1. verify: `systemd-analyze verify` on every unit, on a temporary copy
#      in which /usr/bin/cdrvault is the binary under test (verify refuses
#      a unit whose ExecStart= names a file that does not exist);
#   2. same hardening: the oneshot services carry cdrvault.service's
#      hardening lines unchanged;
#   3. exposure: `systemd-analyze security --offline=yes` on each service,
#      failing above EXPOSURE_MAX;
#   4. system calls: the binary runs as an unprivileged user under strace
#      (demo, keys init, retention verify, audit verify, serve with a
#      /healthz probe and SIGTERM) and every call it makes must pass the
#      units' SystemCallFilter=; so must the calls the durability code
#      cannot do without (fsync, flock, link, rename, ...);
#   5. evidence: the oneshots' ExecStart= shell lines, unescaped as systemd
#      does ($$ -> $, %% -> %), run against that data: each must append a
#      dated file with a header, cdrvault's output and its exit status, and
#      exit as cdrvault did;
#   6. sysusers and tmpfiles: applied to an empty root (--root), they must
#      make the user and group 10001 and the directories with their modes.
#
# What is not checked here: the sandbox itself (namespaces, read-only
# paths, the seccomp filter as applied) needs systemd as PID 1.
#
# Usage: deploy/systemd/check.sh [--binary PATH]
#   (default: target/release/cdrvault, else target/debug/cdrvault)
# Installs systemd (for systemd-analyze), strace and curl from Debian if
# missing. Exits non-zero on any failure.
set -euo pipefail
caller_dir=$PWD
cd "$(dirname "$0")"
repo=$(cd ../.. && pwd)

EXPOSURE_MAX=1.5
binary=
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$binary" ]; then
  for candidate in "$repo/target/release/cdrvault" "$repo/target/debug/cdrvault"; do
    if [ -x "$candidate" ]; then binary=$candidate; break; fi
  done
fi
case "$binary" in /*|'') ;; *) binary=$caller_dir/$binary ;; esac
if [ -z "$binary" ] || [ ! -x "$binary" ]; then
  echo "no cdrvault binary: build one or pass --binary" >&2
  exit 2
fi
if [ "$(id -u)" != 0 ]; then
  echo "refused: run as root (the binary runs as nobody under strace -u)" >&2
  exit 2
fi

missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v strace >/dev/null || missing+=(strace)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work=$(mktemp -d)
chmod 0755 "$work"
serve_pid=
cleanup() {
  [ -z "$serve_pid" ] || kill $(pgrep -P "$serve_pid") "$serve_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
services=(cdrvault.service cdrvault-retention-verify.service cdrvault-audit-verify.service)
timers=(cdrvault-retention-verify.timer cdrvault-audit-verify.timer)
echo "binary under test: $binary ($("$binary" --version))"
# A copy that the unprivileged user below can reach wherever the checkout is.
install -m 0755 "$binary" "$work/cdrvault"

# --- 1. verify -------------------------------------------------------------
mkdir "$work/units"
for unit in "${services[@]}" "${timers[@]}"; do
  sed "s#/usr/bin/cdrvault#$binary#g" "$unit" >"$work/units/$unit"
done
if (cd "$work/units" && systemd-analyze verify --man=no "${services[@]}" "${timers[@]}") >"$work/verify.txt" 2>&1 \
    && [ ! -s "$work/verify.txt" ]; then
  echo "ok: systemd-analyze verify: ${#services[@]} services, ${#timers[@]} timers (ExecStart= pointed at the binary under test)"
else
  fail "systemd-analyze verify:"; sed 's/^/  /' "$work/verify.txt"
fi

# --- 2. same hardening -----------------------------------------------------
hardening() { sed -n '/^# .*[Hh]ardening/,/^\[Install\]\|^$/p' "$1" | grep -v '^#' | grep -v '^\[Install\]' | grep -v '^$'; }
reference=$(hardening cdrvault.service)
[ "$(echo "$reference" | wc -l)" -ge 20 ] || fail "cdrvault.service: hardening block not found"
for unit in cdrvault-retention-verify.service cdrvault-audit-verify.service; do
  if diff <(echo "$reference") <(hardening "$unit") >"$work/hardening.diff"; then
    echo "ok: $unit has the hardening of cdrvault.service ($(echo "$reference" | wc -l) lines)"
  else
    fail "$unit: hardening differs from cdrvault.service"; sed 's/^/  /' "$work/hardening.diff"
  fi
done

# --- 3. exposure -----------------------------------------------------------
# --threshold counts in tenths of the displayed level.
threshold=$(awk -v max="$EXPOSURE_MAX" 'BEGIN { printf "%d", max * 10 + 0.5 }')
for unit in "${services[@]}"; do
  if systemd-analyze security --offline=yes --threshold="$threshold" "$work/units/$unit" >"$work/security.txt" 2>&1; then
    echo "ok: $(grep -o 'Overall exposure level.*' "$work/security.txt") (at most $EXPOSURE_MAX)"
  else
    fail "$unit: exposure above $EXPOSURE_MAX"; grep -E '✗|Overall' "$work/security.txt" | sed 's/^/  /'
  fi
done

# --- 4. system calls -------------------------------------------------------
# The calls the filter lets through: systemd-analyze syscall-filter expands
# each group; a '~' line removes from the allow list, as systemd does.
allowed_calls() {
  python3 - "$1" <<'PY'
import subprocess, sys
groups = {}
def expand(name):
    if not name.startswith("@"):
        return {name}
    if name not in groups:
        out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True).stdout
        calls = set()
        for line in out.splitlines()[1:]:
            line = line.strip()
            if line and not line.startswith("#"):
                calls |= expand(line)
        groups[name] = calls
    return groups[name]
allowed = None
for line in open(sys.argv[1]):
    if not line.startswith("SystemCallFilter="):
        continue
    value = line.split("=", 1)[1].strip()
    deny = value.startswith("~")
    names = set()
    for item in value.lstrip("~").split():
        names |= expand(item)
    if deny:
        allowed = (allowed or set()) - names
    else:
        allowed = (allowed or set()) | names
print("\n".join(sorted(allowed or [])))
PY
}
allowed_calls cdrvault.service >"$work/allowed.txt"

# As nobody (strace -u switches user before exec, so the switch is not
# counted): as root, SQLite chowns its -wal and -shm files to the
# database's owner (fchown, a privileged call); as the service's user it
# does not.
data=$work/run
install -d -m 0700 -o nobody -g nogroup "$data"
traced() { local name=$1; shift; strace -f -qq -c -u nobody -o "$work/strace-$name.txt" "$@"; }
traced demo "$work/cdrvault" demo --records 2000 --days 3 \
  --data-dir "$data/data" --keys-dir "$data/keys" --state-dir "$data/state" >"$work/demo.log" 2>&1 \
  || { fail "cdrvault demo failed"; tail -5 "$work/demo.log"; }
state=$(find "$data/state" -mindepth 1 -maxdepth 1 -name 'demo-*' 2>/dev/null | head -n 1)
dirs=(--data-dir "$data/data" --keys-dir "$data/keys" --state-dir "$state")
traced keys-init "$work/cdrvault" keys init --dir "$data/keys2" --data-dir "$data/data2" >/dev/null 2>&1 \
  || fail "cdrvault keys init failed"
traced retention-verify "$work/cdrvault" retention verify "${dirs[@]}" >/dev/null 2>&1 \
  || fail "cdrvault retention verify failed on the demo's data"
traced audit-verify "$work/cdrvault" audit verify "${dirs[@]}" >/dev/null 2>&1 \
  || fail "cdrvault audit verify failed on the demo's data"
# serve with no Kafka to reach (a closed port), on a free loopback port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
CDRVAULT_KAFKA__BROKERS=127.0.0.1:9 CDRVAULT_HTTP__LISTEN=127.0.0.1:$port CDRVAULT_ACCESS__LISTEN=127.0.0.1:$(free_port) \
  strace -f -qq -c -u nobody -o "$work/strace-serve.txt" "$work/cdrvault" serve "${dirs[@]}" >"$work/serve.log" 2>&1 &
serve_pid=$!
healthy=no
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then healthy=yes; break; fi
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$port/metrics" >/dev/null 2>&1 || true
# SIGTERM to cdrvault itself, strace's child; strace exits with its status.
child=$(pgrep -P "$serve_pid" || true)
if [ -n "$child" ]; then kill -TERM "$child"; else fail "cdrvault serve is not running"; fi
wait "$serve_pid" || fail "cdrvault serve did not exit cleanly on SIGTERM"
serve_pid=
[ "$healthy" = yes ] || { fail "cdrvault serve never answered /healthz"; tail -5 "$work/serve.log"; }

cat "$work"/strace-*.txt | awk 'NF >= 5 && $NF ~ /^[a-z_0-9]+$/ && $NF != "total" && $NF != "syscall" { print $NF }' | sort -u >"$work/used.txt"
# The durability code's calls, whether or not this run happened to make them.
printf '%s\n' fsync fdatasync flock link linkat rename renameat renameat2 unlink unlinkat \
  fchmod fchmodat ftruncate openat mkdir mkdirat getdents64 statx newfstatat getrandom \
  | sort -u >"$work/needed.txt"
denied=$(sort -u "$work/used.txt" "$work/needed.txt" | comm -23 - "$work/allowed.txt")
if [ -z "$denied" ]; then
  echo "ok: SystemCallFilter allows all $(wc -l <"$work/used.txt") system calls cdrvault made (demo, keys init, retention verify, audit verify, serve) and $(wc -l <"$work/needed.txt") it needs for durability"
else
  fail "SystemCallFilter denies system calls cdrvault uses: ${denied//$'\n'/ }"
fi

# --- 5. evidence -----------------------------------------------------------
# The ExecStart= line of a unit as the shell receives it: continuation
# lines joined, systemd's quoting removed, '$$' and '%%' unescaped, and the
# installed paths replaced by this run's.
exec_line() {
  python3 - "$1" <<'PY'
import shlex, sys
text = open(sys.argv[1]).read().replace("\\\n", " ")
line = next(l for l in text.splitlines() if l.startswith("ExecStart="))
argv = shlex.split(line.split("=", 1)[1])
assert argv[:2] == ["/bin/bash", "-c"], argv
print(argv[2].replace("$$", "$").replace("%%", "%"))
PY
}
evidence=$work/evidence
install -d -m 0700 -o nobody -g nogroup "$evidence"
cat >"$work/cdrvault.toml" <<EOF
[storage]
data_dir = "$data/data"
[keys]
dir = "$data/keys"
[state]
dir = "$state"
EOF
chmod 0644 "$work/cdrvault.toml"
today=$(date -u +%F)
for check in retention-verify audit-verify; do
  unit=cdrvault-$check.service
  script=$(exec_line "$unit" | sed -e "s#/usr/bin/cdrvault#$work/cdrvault#g" \
    -e "s#/etc/cdrvault/cdrvault.toml#$work/cdrvault.toml#g" -e "s#/var/log/cdrvault/evidence#$evidence#g")
  file=$evidence/$check-$today.txt
  for round in 1 2; do
    status=0
    # UMask=0077, as in the unit.
    (umask 0077 && cd / && strace -f -qq -c -u nobody -o "$work/strace-wrapper-$check-$round.txt" /bin/bash -c "$script") \
      >"$work/journal.txt" 2>&1 || status=$?
    [ "$status" = 0 ] || fail "$unit: the ExecStart shell exited $status"
  done
  if [ -f "$file" ] && [ "$(grep -c "^# .*: cdrvault ${check/-/ }$" "$file")" = 2 ] \
      && [ "$(grep -c '^# exit status 0$' "$file")" = 2 ] && grep -q -v '^#' "$file" \
      && [ "$(stat -c %a "$file")" = 600 ] && diff -q "$work/journal.txt" <(tail -n "$(wc -l <"$work/journal.txt")" "$file") >/dev/null; then
    echo "ok: $unit appends to $(basename "$file") (two runs: header, output, exit status; mode 0600) and to the journal"
  else
    fail "$unit: evidence file $file not as expected"; sed 's/^/  /' "$file" 2>/dev/null | head -20
  fi
done
# A failing check must fail the unit (pipefail) and say so in the file.
for check in retention-verify audit-verify; do
  broken=$(exec_line "cdrvault-$check.service" | sed -e "s#/usr/bin/cdrvault#/bin/false#g" -e "s#/var/log/cdrvault/evidence#$evidence#g")
  status=0
  setpriv --reuid=nobody --regid=nogroup --clear-groups -- /bin/bash -c "$broken" >/dev/null 2>&1 || status=$?
  if [ "$status" = 1 ] && [ "$(tail -n 1 "$evidence/$check-$today.txt")" = "# exit status 1" ]; then
    echo "ok: cdrvault-$check.service fails when the check fails (exit status 1, recorded in the file)"
  else
    fail "cdrvault-$check.service: a failing check exited $status through the ExecStart shell"
  fi
done
cat "$work"/strace-wrapper-*.txt | awk 'NF >= 5 && $NF ~ /^[a-z_0-9]+$/ && $NF != "total" && $NF != "syscall" { print $NF }' | sort -u >"$work/used-wrapper.txt"
denied=$(comm -23 "$work/used-wrapper.txt" "$work/allowed.txt")
if [ -z "$denied" ]; then
  echo "ok: SystemCallFilter allows the $(wc -l <"$work/used-wrapper.txt") system calls of the evidence shell (bash, date, uname, tee, cdrvault)"
else
  fail "SystemCallFilter denies system calls of the evidence shell: ${denied//$'\n'/ }"
fi

# --- 6. sysusers and tmpfiles -----------------------------------------------
root=$work/root
mkdir -p "$root/etc/sysusers.d" "$root/etc/tmpfiles.d"
cp cdrvault.sysusers.conf "$root/etc/sysusers.d/cdrvault.conf"
cp cdrvault.tmpfiles.conf "$root/etc/tmpfiles.d/cdrvault.conf"
if systemd-sysusers --root="$root" >"$work/sysusers.log" 2>&1 \
    && grep -qx 'cdrvault:x:10001:10001:[^:]*:/var/lib/cdrvault:/usr/sbin/nologin' "$root/etc/passwd" \
    && grep -qx 'cdrvault:x:10001:' "$root/etc/group"; then
  echo "ok: systemd-sysusers makes user and group cdrvault (10001)"
else
  fail "systemd-sysusers: user or group cdrvault not as expected"; sed 's/^/  /' "$work/sysusers.log"
fi
expected='755 0:0 /etc/cdrvault
700 10001:10001 /etc/cdrvault/keys
750 10001:10001 /var/log/cdrvault
750 10001:10001 /var/log/cdrvault/evidence'
if systemd-tmpfiles --root="$root" --create >"$work/tmpfiles.log" 2>&1 \
    && [ "$(cd "$root" && stat -c '%a %u:%g /%n' etc/cdrvault etc/cdrvault/keys var/log/cdrvault var/log/cdrvault/evidence)" = "$expected" ]; then
  echo "ok: systemd-tmpfiles makes /etc/cdrvault/keys (0700) and the log and evidence directories (0750)"
else
  fail "systemd-tmpfiles: directories not as expected"; sed 's/^/  /' "$work/tmpfiles.log"
fi

if [ "$failures" -gt 0 ]; then
  echo "systemd units: $failures checks failed"
  exit 1
fi
echo "systemd units: all checks passed"
