"""Metrics on the real /metrics port of a real server; promtool lint."""

from __future__ import annotations

import shutil
import subprocess

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from latentguard.detectors.registry import DETECTORS
from latentguard.server.metrics import AUTH_FAILURE_REASONS
from latentguard.server.rpc.client import channel
from latentguard.v1 import guardrail_pb2 as pb
from latentguard.v1 import guardrail_pb2_grpc as pb_grpc

from .grpc_harness import ServerThread, make_settings, scrape, value

CONTRACT = {
    "latentguard_requests": "counter",
    "latentguard_artifacts": "counter",
    "latentguard_detector_score": "histogram",
    "latentguard_step_check_seconds": "histogram",
    "latentguard_generation_seconds": "histogram",
    "latentguard_drift_score": "gauge",
    "latentguard_canary_divergence": "gauge",
    # beyond the contract, for rules, dashboards and the autoscaler
    "latentguard_detector_errors": "counter",
    "latentguard_admitted_requests": "gauge",
    "latentguard_admission_capacity": "gauge",
    "latentguard_batch_size": "histogram",
    "latentguard_deployment_info": "gauge",
    "latentguard_kernel_fallbacks": "gauge",
    "latentguard_shadow_runs": "counter",  # series only for configured shadow pairs
    "latentguard_shadow_divergence": "histogram",
    "latentguard_auth_failures": "counter",
    "latentguard_drift_pvalue": "gauge",
    "latentguard_drift_window_requests": "gauge",
    "latentguard_drift_evaluations": "counter",
    "latentguard_canary_tolerance": "gauge",
    "latentguard_canary_runs": "counter",
    "latentguard_adapter_scale": "gauge",  # series only for configured adapters
    "latentguard_calibration_runs": "gauge",
    "latentguard_calibration_runs_needed": "gauge",
    "latentguard_evidence_writes": "counter",
}


@pytest.fixture(scope="module")
def server():
    srv = ServerThread(make_settings()).start()
    yield srv
    srv.stop()


def test_contract_names_exist_with_series_at_zero_before_traffic():
    srv = ServerThread(make_settings()).start()
    try:
        text = scrape(srv)
    finally:
        srv.stop()
    families = {
        f.name: f.type for f in text_string_to_metric_families(text) if f.name.startswith("latentguard")
    }
    assert families == CONTRACT
    for outcome in ("ok", "flagged", "aborted", "rejected", "error", "cancelled"):
        assert (
            value(
                text,
                "latentguard_requests_total",
                deployment="tiny-flux",
                family="flux",
                variant="fp32",
                outcome=outcome,
            )
            == 0
        )
    for det in DETECTORS:
        assert (
            value(
                text,
                "latentguard_artifacts_total",
                deployment="tiny-sd3",
                family="sd3",
                variant="fp32",
                detector=det,
            )
            == 0
        )
    for reason in AUTH_FAILURE_REASONS:
        assert value(text, "latentguard_auth_failures_total", reason=reason) == 0
    assert "prompt" not in text and "seed" not in text
    info = dict(deployment="tiny-sd3", family="sd3", variant="fp32", baseline="")
    assert value(text, "latentguard_deployment_info", **info) == 1
    assert value(text, "latentguard_admission_capacity", deployment="tiny-sd3") == 2  # 1 + max_queue 1
    assert value(text, "latentguard_admitted_requests", deployment="tiny-sd3") == 0
    for method in ("kl", "angle", "mmd", "shift"):  # the built-ins ship drift references and canaries
        assert value(text, "latentguard_drift_score", deployment="tiny-flux", method=method) == 0
    assert value(text, "latentguard_drift_pvalue", deployment="tiny-flux") == 1
    assert value(text, "latentguard_canary_divergence", deployment="tiny-sd3-int4") == 0
    assert value(text, "latentguard_canary_tolerance", deployment="tiny-sd3-int4") == 1e-3
    assert value(text, "latentguard_canary_runs_total", deployment="tiny-sd3", outcome="compared") == 0


def test_traffic_moves_the_right_series(server):
    stub = pb_grpc.GuardrailStub(channel(server.target))
    before = scrape(server)
    stub.Generate(
        pb.GenerateRequest(
            deployment="tiny-sd3", prompt="a red circle on a blue background", seed=1, skip_image=True
        ),
        timeout=60,
    )
    stub.Generate(
        pb.GenerateRequest(deployment="tiny-sd3", prompt="a fox", drill="blur:step=2", skip_image=True),
        timeout=60,
    )
    stub.Generate(pb.GenerateRequest(deployment="tiny-sd3", prompt="a fox", drill="nan:step=1"), timeout=60)
    with pytest.raises(grpc.RpcError):
        stub.Generate(pb.GenerateRequest(deployment="tiny-sd3", prompt=""), timeout=10)
    after = scrape(server)
    labels = {"deployment": "tiny-sd3", "family": "sd3", "variant": "fp32"}

    def delta(name, **extra):
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    assert delta("latentguard_requests_total", outcome="ok") == 1
    assert delta("latentguard_requests_total", outcome="flagged") == 1
    assert delta("latentguard_requests_total", outcome="aborted") == 1
    assert delta("latentguard_requests_total", outcome="rejected") == 1
    assert delta("latentguard_artifacts_total", detector="over_smoothing") == 1
    assert delta("latentguard_artifacts_total", detector="non_finite") == 1
    steps = value(after, "latentguard_step_check_seconds_count", deployment="tiny-sd3") - value(
        before, "latentguard_step_check_seconds_count", deployment="tiny-sd3"
    )
    assert steps == 12 + 12 + 2  # every step checked is one observation; the abort stopped at step 1
    gen = value(
        after, "latentguard_generation_seconds_count", deployment="tiny-sd3", outcome="aborted"
    ) - value(before, "latentguard_generation_seconds_count", deployment="tiny-sd3", outcome="aborted")
    assert gen == 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (make test installs it)")
def test_promtool_check_metrics_is_clean(server):
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=scrape(server), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_detector_errors_and_admission_gauges_are_recorded():
    from prometheus_client import CollectorRegistry, generate_latest

    from latentguard.detectors import DetectorResult
    from latentguard.server.metrics import DeploymentLabels, Metrics
    from latentguard.server.report import Report

    registry = CollectorRegistry()
    metrics = Metrics(registry, [DeploymentLabels("cand", "sd3", "fp8", baseline="base")])
    failing = DetectorResult("spectral_residual", 0.0, 1.0, False, -1, error="RuntimeError: boom")
    fine = DetectorResult("latent_variance", 0.5, 1.0, False, -1)
    report = Report("pass", "cand", "sd3", "fp8", 0, 4, 4, -1, "", [failing, fine], [])
    metrics.observe(report, 0.1)
    metrics.set_capacity("cand", 9)
    metrics.set_admitted("cand", 3)
    text = generate_latest(registry).decode()
    errors = "latentguard_detector_errors_total"
    assert value(text, errors, deployment="cand", detector="spectral_residual") == 1
    assert value(text, errors, deployment="cand", detector="latent_variance") == 0
    assert (
        value(text, "latentguard_detector_score_count", deployment="cand", detector="spectral_residual") == 0
    )
    assert value(text, "latentguard_admitted_requests", deployment="cand") == 3
    info = dict(deployment="cand", family="sd3", variant="fp8", baseline="base")
    assert value(text, "latentguard_deployment_info", **info) == 1
