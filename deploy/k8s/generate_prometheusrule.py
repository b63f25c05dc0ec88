"""Writes deploy/k8s/prometheusrule.yaml from deploy/prometheus/rules/*.yml (one source of truth).

    python deploy/k8s/generate_prometheusrule.py

A test regenerates it and fails when the checked-in manifest is stale.
"""

from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1]
OUT = DEPLOY / "k8s" / "prometheusrule.yaml"


def render() -> str:
    groups = []
    for path in sorted((DEPLOY / "prometheus" / "rules").glob("*.yml")):
        groups += yaml.safe_load(path.read_text())["groups"]
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "latentguard", "labels": {"app.kubernetes.io/name": "latentguard"}},
        "spec": {"groups": groups},
    }
    header = "# GENERATED from deploy/prometheus/rules by deploy/k8s/generate_prometheusrule.py\n"
    return header + yaml.safe_dump(manifest, sort_keys=False, width=120)


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
