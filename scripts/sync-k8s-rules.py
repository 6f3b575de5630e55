#!/usr/bin/env python3
"""Write deploy/k8s/prometheusrule.yaml from deploy/prometheus/rules/carwatch.rules.yml.

The Prometheus Operator loads alerting rules from PrometheusRule resources, not from files; this
copies the rule groups verbatim so that there is one source of truth. tests/ops fails when the
two differ. Usage: .venv/bin/python scripts/sync-k8s-rules.py [--check]
"""

import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy/prometheus/rules/carwatch.rules.yml"
TARGET = REPO / "deploy/k8s/prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/rules/carwatch.rules.yml by scripts/sync-k8s-rules.py:
# edit the rules file, then regenerate. The Prometheus Operator loads these rules; the `release`
# label must match the ruleSelector of your Prometheus resource (kube-prometheus-stack: the Helm
# release). The runbook links point at docs/runbook.md in this repository.
"""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "carwatch-pipeline",
            "namespace": "carwatch",
            "labels": {
                "app.kubernetes.io/name": "carwatch-worker",
                "app.kubernetes.io/part-of": "carwatch",
                "release": "prometheus",
            },
        },
        "spec": {"groups": groups},
    }
    body = yaml.dump(resource, Dumper=_Dumper, sort_keys=False, width=4096, allow_unicode=True)
    return HEADER + body


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(
                f"{TARGET.relative_to(REPO)} is out of date: run scripts/sync-k8s-rules.py",
                file=sys.stderr,
            )
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
