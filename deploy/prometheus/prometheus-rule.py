#!/usr/bin/env python3
"""The PrometheusRule (Prometheus Operator) of cdrvault's alerting rules.

deploy/prometheus/cdrvault-rules.yml is the one source of the rules; this
wraps its groups in a PrometheusRule for clusters that load rules through
the operator, and writes it to deploy/kubernetes/base/prometheusrule.yaml.

    python3 deploy/prometheus/prometheus-rule.py          write the file
    python3 deploy/prometheus/prometheus-rule.py --check  fail if it differs
"""

import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/cdrvault-rules.yml"
OUTPUT = ROOT / "deploy/kubernetes/base/prometheusrule.yaml"
HEADER = (
    "# Written by deploy/prometheus/prometheus-rule.py from\n"
    "# deploy/prometheus/cdrvault-rules.yml: edit that file, then run the script.\n"
)


def rendered() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "cdrvault",
            # The label a Prometheus Operator's ruleSelector usually matches;
            # change it to yours.
            "labels": {"prometheus": "k8s", "role": "alert-rules"},
        },
        "spec": {"groups": groups},
    }
    return HEADER + yaml.safe_dump(rule, sort_keys=False, width=120)


def main() -> int:
    text = rendered()
    if "--check" in sys.argv[1:]:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(ROOT)} differs from {RULES.relative_to(ROOT)}: "
                  "run deploy/prometheus/prometheus-rule.py", file=sys.stderr)
            return 1
        print(f"{OUTPUT.relative_to(ROOT)} matches {RULES.relative_to(ROOT)}")
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
