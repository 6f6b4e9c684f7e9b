"""Writes k8s/monitoring/prometheusrule.yaml from deploy/prometheus/alerts.yml.

A cluster that runs the Prometheus Operator loads alerting and recording rules only
from PrometheusRule resources; the compose stack's Prometheus reads the rule file
itself. One source, two forms: the rules are written in deploy/prometheus/alerts.yml
(where promtool tests them), and this copies their groups, unchanged, into the
resource. ``make k8s-rules`` runs it; ``tests/unit/test_k8s.py`` fails when the two
differ.

    python -m harness.k8s_rules [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RESOURCE = ROOT / "k8s" / "monitoring" / "prometheusrule.yaml"

HEADER = """\
# Written by `make k8s-rules` from deploy/prometheus/alerts.yml: edit that file (its
# comments say why each rule is written as it is, and alerts_test.yml tests it), then
# run `make k8s-rules`. tests/unit/test_k8s.py fails while the two differ.
#
# For clusters that run the Prometheus Operator, which loads rules only from
# PrometheusRule resources. Your Prometheus may select them by a label (often
# `release`): add it under metadata.labels. Kept out of k8s/kustomization.yaml, as
# the ServiceMonitor is (it needs the Operator's CustomResourceDefinition):
#   kubectl apply -f k8s/monitoring/
"""


def resource(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The PrometheusRule that holds ``groups``."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "rewardstream",
            "namespace": "rewardstream",
            "labels": {
                "app.kubernetes.io/name": "rewardstream",
                "app.kubernetes.io/part-of": "rewardstream",
            },
        },
        "spec": {"groups": groups},
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the rules' expressions and descriptions) as literal blocks."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def render(rules_text: str) -> str:
    """The resource's file for the rule file ``rules_text``."""
    groups = yaml.safe_load(rules_text)["groups"]
    body = yaml.dump(resource(groups), Dumper=_Dumper, sort_keys=False, width=4096)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is not current")
    args = parser.parse_args(argv)
    wanted = render(RULES.read_text(encoding="utf-8"))
    if args.check:
        current = RESOURCE.read_text(encoding="utf-8") if RESOURCE.exists() else ""
        if current != wanted:
            print(f"{RESOURCE.relative_to(ROOT)} is not current: run `make k8s-rules`")
            return 1
        return 0
    RESOURCE.write_text(wanted, encoding="utf-8")
    print(f"wrote {RESOURCE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
