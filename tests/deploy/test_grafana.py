"""Grafana dashboards: generated from code, current, structurally sound, wired to provisioning."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from .script_loader import load_script

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"


def generator():
    return load_script(GRAFANA / "generate.py")


def test_dashboard_json_is_current():
    rendered = generator().render()
    on_disk = {p.name: p.read_text() for p in (GRAFANA / "dashboards").glob("*.json")}
    assert on_disk == rendered, "stale dashboards: run `python deploy/grafana/generate.py`"


def test_dashboards_are_structurally_sound():
    uids = set()
    for name, text in generator().render().items():
        board = json.loads(text)
        assert board["uid"] not in uids
        uids.add(board["uid"])
        variables = {v["name"] for v in board["templating"]["list"]}
        assert {"datasource"} <= variables
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(refs) == len(set(refs)), panel["title"]
            for target in panel["targets"]:
                used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
                assert used <= variables, (name, panel["title"], used - variables)
                assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    assert {"latentguard-overview", "latentguard-drift", "latentguard-ab", "latentguard-cost"} == uids


def test_provisioning_points_at_the_dashboards():
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "latentguard.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["type"] == "prometheus"
    compose = yaml.safe_load((GRAFANA.parent / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{path}:ro" in mounts
