"""A real Prometheus scraping three real `latentguard serve` replicas on loopback, rules loaded.

One stack for the module (about a minute to start on 2 cores):
- traffic with drills goes through one client-side round-robin gRPC channel over the three replicas;
- every recording rule and every Grafana dashboard query returns data;
- the drills' alerts reach pending or firing;
- the aggregated recording rule equals the sum of the replicas' own counters (scale-out check).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from latentguard.server.harness.process import ServeProcess, free_port
from latentguard.v1 import guardrail_pb2 as pb
from latentguard.v1 import guardrail_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
REPLICAS = 3
CONFIG = {
    "deployments": [
        {"name": "tiny-sd3", "model": "tiny-sd3", "family": "sd3", "max_sequence_length": 64},
        # a candidate of the same model: enough to exercise the baseline joins of the A/B rules
        {
            "name": "tiny-sd3-canary",
            "model": "tiny-sd3",
            "family": "sd3",
            "max_sequence_length": 64,
            "baseline": "tiny-sd3",
        },
    ],
    "shadow": [{"baseline": "tiny-sd3", "candidate": "tiny-sd3-canary", "fraction": 1.0}],
}
VARIABLES = {
    "$deployment": ".*",
    "$variant": ".*",
    "$candidate": "tiny-sd3-canary",
    "$baseline": "tiny-sd3",
    "$__rate_interval": "1m",
}


def query(prom: str, expr: str) -> list[dict]:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if shutil.which("prometheus") is None:
        pytest.fail(
            "prometheus is not installed: `make test` installs Debian's package (apt-get install prometheus)"
        )
    tmp = tmp_path_factory.mktemp("stack")
    config = tmp / "latentguard.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    replicas = [ServeProcess(grace_seconds=5, config=str(config)) for _ in range(REPLICAS)]
    prom_port = free_port()
    prom_config = tmp / "prometheus.yml"
    prom_config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(p) for p in RULES],
                "scrape_configs": [
                    {
                        "job_name": "latentguard",
                        "static_configs": [{"targets": [f"127.0.0.1:{r.metrics_port}" for r in replicas]}],
                    }
                ],
            }
        )
    )
    prometheus = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={prom_config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--enable-feature=exemplar-storage",  # the request ids on the counters (deploy/compose.yaml)
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for r in replicas:
            r.wait_serving(timeout=240)
        prom = f"http://127.0.0.1:{prom_port}"
        wait_for(lambda: len(query(prom, 'up{job="latentguard"} == 1')) == REPLICAS, 60, "three targets up")
        yield prom, replicas
    finally:
        prometheus.terminate()
        for r in replicas:
            r.terminate(timeout=30)
        prometheus.wait(timeout=30)


@pytest.fixture(scope="module")
def traffic(stack):
    """Benign and drilled requests over one round-robin channel; returns the verdict counts."""
    _, replicas = stack
    targets = ",".join(r.target for r in replicas)
    chan = grpc.insecure_channel(f"ipv4:{targets}", options=[("grpc.lb_policy_name", "round_robin")])
    stub = pb_grpc.GuardrailStub(chan)
    verdicts: dict[str, int] = {}
    plan = [("", 4), ("nan:step=2", 3), ("blur:step=2", 3), ("collapse:step=2", 2)]
    for deployment in ("tiny-sd3", "tiny-sd3-canary"):
        for drill, n in plan:
            for i in range(n):
                req = pb.GenerateRequest(
                    deployment=deployment, prompt=f"a red fox {i}", seed=i, drill=drill, skip_image=True
                )
                verdict = stub.Generate(req, timeout=120).report.verdict
                verdicts[verdict] = verdicts.get(verdict, 0) + 1
    chan.close()
    time.sleep(3)  # a few scrapes and rule evaluations
    return verdicts


def test_traffic_was_spread_over_every_replica(stack, traffic):
    _, replicas = stack
    assert traffic.get("abort", 0) >= 6 and traffic.get("flag", 0) >= 1
    for r in replicas:
        handled = sum(replica_counters(r).values())
        assert handled > 0, f"replica {r.target} received no traffic"


def test_every_recording_rule_returns_data(stack, traffic):
    prom, _ = stack
    records = [
        r["record"]
        for f in RULES
        for g in yaml.safe_load(f.read_text())["groups"]
        for r in g["rules"]
        if "record" in r
    ]
    assert len(records) >= 15
    for record in records:
        wait_for(lambda: query(prom, record), 30, f"recording rule {record}")  # noqa: B023


def test_every_dashboard_query_returns_data(stack, traffic):
    prom, _ = stack
    exprs = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        exprs += [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert len(exprs) >= 20
    for expr in exprs:
        for name, value in VARIABLES.items():
            expr = expr.replace(name, value)
        wait_for(lambda: query(prom, expr), 30, f"dashboard query {expr}")  # noqa: B023


def test_drill_alerts_reach_pending_or_firing(stack, traffic):
    prom, _ = stack

    def active() -> set[str]:
        return {a["metric"]["alertname"] for a in query(prom, 'ALERTS{alertstate=~"pending|firing"}')}

    wait_for(
        lambda: {"LatentguardNonFiniteLatents", "LatentguardArtifactRateHigh"} <= active(), 30, "drill alerts"
    )
    assert "LatentguardTargetDown" not in active() and "LatentguardTargetAbsent" not in active()


def test_flagged_requests_reach_prometheus_as_exemplars_with_their_request_ids(stack, traffic):
    """Prometheus scrapes OpenMetrics by default: the artifact counter's exemplars carry request ids,
    which is what the dashboards' exemplar panels show and `latentguard evidence show` takes."""
    prom, _ = stack

    def exemplars() -> list[dict]:
        now = time.time()
        url = f"{prom}/api/v1/query_exemplars?" + urllib.parse.urlencode(
            {"query": 'latentguard_artifacts_total{detector="non_finite"}', "start": now - 600, "end": now}
        )
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        return [e for series in body["data"] for e in series["exemplars"]]

    found = wait_for(exemplars, 30, "exemplars on latentguard_artifacts_total")
    assert all(len(e["labels"]["request_id"]) == 32 for e in found)


def replica_counters(replica: ServeProcess) -> dict[tuple[str, str], float]:
    url = f"http://127.0.0.1:{replica.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    return {
        (s.labels["deployment"], s.labels["outcome"]): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "latentguard_requests_total"
    }


def test_aggregated_recording_rule_equals_the_sum_of_the_replicas(stack, traffic):
    prom, replicas = stack
    expected: dict[tuple[str, str], float] = {}
    for r in replicas:
        for key, value in replica_counters(r).items():
            expected[key] = expected.get(key, 0.0) + value
    assert sum(expected.values()) >= 24  # the warm-up is not counted; every request of `traffic` is

    def aggregated() -> dict[tuple[str, str], float] | None:
        rows = query(prom, "deployment_variant_outcome:latentguard_requests:sum")
        got = {(x["metric"]["deployment"], x["metric"]["outcome"]): float(x["value"][1]) for x in rows}
        return got if got == expected else None

    wait_for(aggregated, 30, f"recorded sums to equal the replicas' counters {expected}")
