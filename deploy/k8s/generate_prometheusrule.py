"""Writes deploy/k8s/prometheusrule.yaml from deploy/prometheus/rules/*.yml (one source of truth).

    python deploy/k8s/generate_prometheusrule.py [--runbook-base URL]

The rules' runbook_url points into the docs site as `make docs` serves it (RUNBOOK_BASE); pass the
runbook page's address where you host the docs (`mkdocs build` output) to point the alerts there.

A test regenerates it and fails when the checked-in manifest is stale.
"""

from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1]
OUT = DEPLOY / "k8s" / "prometheusrule.yaml"
RUNBOOK_BASE = "http://127.0.0.1:8000/operations/runbook/"  # `make docs`; the rules files use it


def render(runbook_base: str = RUNBOOK_BASE) -> str:
    groups = []
    for path in sorted((DEPLOY / "prometheus" / "rules").glob("*.yml")):
        groups += yaml.safe_load(path.read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"] if "alert" in r):
        url = rule["annotations"]["runbook_url"]
        rule["annotations"]["runbook_url"] = runbook_base + url.removeprefix(RUNBOOK_BASE)
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "latentguard", "labels": {"app.kubernetes.io/name": "latentguard"}},
        "spec": {"groups": groups},
    }
    header = "# GENERATED from deploy/prometheus/rules by deploy/k8s/generate_prometheusrule.py\n"
    return header + yaml.safe_dump(manifest, sort_keys=False, width=120)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runbook-base", default=RUNBOOK_BASE, help="address of the docs' runbook page")
    OUT.write_text(render(parser.parse_args().runbook_base))
    print(f"wrote {OUT}")
