"""Alert and recording rules with the real promtool: syntax, unit tests, and annotations."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from .script_loader import load_script

PROM = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RUNBOOK = PROM.parents[1] / "docs" / "operations" / "runbook.md"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=300, cwd=PROM)


def alerts() -> list[dict]:
    return [
        r
        for f in RULE_FILES
        for g in yaml.safe_load(f.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    ]


def test_rules_pass_promtool_check():
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass():
    tests = sorted(str(p) for p in (PROM / "tests").glob("*_test.yml"))
    result = promtool("test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(tests)


def test_every_alert_is_unit_tested_and_documented():
    tested = "\n".join(p.read_text() for p in (PROM / "tests").glob("*_test.yml"))
    runbook = RUNBOOK.read_text()
    base = load_script(PROM.parent / "k8s" / "generate_prometheusrule.py").RUNBOOK_BASE
    assert base.endswith("/operations/runbook/")  # mkdocs' address of docs/operations/runbook.md
    sections = {h.lower() for h in re.findall(r"^## (\w+)$", runbook, re.M)}
    for rule in alerts():
        name = rule["alert"]
        assert f"alertname: {name}" in tested, f"{name} has no promtool unit test"
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        assert rule["annotations"]["runbook_url"] == f"{base}#{name.lower()}", name
        assert name.lower() in sections, f"{name} has no section in docs/operations/runbook.md"
        assert rule["labels"]["severity"] in {"page", "ticket"}, name
