#!/usr/bin/env bash
# Offline checks of deploy/prometheus, run by scripts/test.sh (which installs
# promtool and amtool from Debian's prometheus and prometheus-alertmanager):
# - the alerting rules load, and their unit tests show each alert firing and
#   not firing;
# - the PrometheusRule of deploy/kubernetes/base is what prometheus-rule.py
#   makes of the rules;
# - the Alertmanager example loads and routes pages, tickets and the
#   promises to the receivers it says.
# (prometheus.yml is checked by deploy/kubernetes/check.sh with the compose
# file it belongs to; tests/prometheus.rs runs the rules in a real server.)
set -euo pipefail
cd "$(dirname "$0")"

promtool check rules cdrvault-rules.yml
promtool test rules cdrvault-rules.test.yml
python3 prometheus-rule.py --check

amtool check-config alertmanager.yml >/dev/null
route() {
  local expected=$1
  shift
  amtool config routes test --config.file=alertmanager.yml --verify.receivers="$expected" "$@" >/dev/null 2>&1 || {
    echo "alertmanager.yml routes {$*} elsewhere than $expected:" >&2
    amtool config routes test --config.file=alertmanager.yml "$@" 2>/dev/null >&2
    exit 1
  }
}
route data-protection,sre-pager severity=page alertname=CdrvaultRetentionOverdue
route data-protection,sre-pager severity=page alertname=CdrvaultRegistryRowRefused
route data-protection,sre-tickets severity=ticket alertname=CdrvaultDisclosureVolumeUnusual
route sre-pager severity=page alertname=CdrvaultDown
route sre-tickets severity=ticket alertname=CdrvaultCompactionFailing
echo "alertmanager.yml: loads, and routes pages, tickets and the promises as it says"
