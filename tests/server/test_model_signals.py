"""The model-level signals on a real server: LoRA adapters and attribution, fleet drift, and
control-prompt canaries (on demand, idle rounds, preemption)."""

from __future__ import annotations

import time

import grpc
import pytest
import yaml
from typer.testing import CliRunner

from latentguard.detectors.drift import DriftReference
from latentguard.server.cli import app
from latentguard.server.config import (
    AdapterConfig,
    CanaryConfig,
    CanaryPrompt,
    DeploymentConfig,
    DriftConfig,
    PolicyConfig,
    Settings,
)
from latentguard.server.errors import ModelLoadError
from latentguard.server.offline.drift_reference import build_drift_reference
from latentguard.server.offline.lora import random_lora
from latentguard.server.offline.trajectories import LocalCollector, default_prompts
from latentguard.server.pipelines.canaries import record
from latentguard.server.pipelines.deployments import load_deployment
from latentguard.server.pipelines.runner import PipelineRunner
from latentguard.server.rpc.client import channel
from latentguard.v1 import guardrail_pb2 as pb
from latentguard.v1 import guardrail_pb2_grpc as pb_grpc

from .grpc_harness import ServerThread, scrape, value

STEPS = 12  # the shipped profile's schedule: at 4 steps its attention envelopes flag most benign requests
CANARIES = [
    CanaryPrompt(prompt="a red circle on a blue background", seed=1),
    CanaryPrompt(prompt="a blue star", seed=2),
]
ANNOTATE = {
    "non_finite": PolicyConfig(action="annotate")
}  # every detector annotates: attribution replays all


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 12-step tiny-sd3 (STEPS)'s drift reference (window 8) and canaries, and a strong LoRA for it."""
    tmp = tmp_path_factory.mktemp("signals")
    cfg = DeploymentConfig(name="base", model="tiny-sd3", family="sd3", steps=STEPS, max_sequence_length=32)
    dep = load_deployment(cfg, with_profile=False)
    build_drift_reference(
        LocalCollector(dep),
        default_prompts("calibration")[:32],
        tmp / "base.drift.safetensors",
        window=8,
        null_windows=500,
    )
    record(PipelineRunner(dep), CANARIES).save(tmp / "base.canaries.safetensors")
    lora = random_lora(dep, tmp / "lora", rank=4, std=0.5, seed=0)
    return cfg, tmp, lora


@pytest.fixture(scope="module")
def server(files):
    cfg, tmp, lora = files
    drift = DriftConfig(reference=str(tmp / "base.drift.safetensors"), every=4)
    canaries = CanaryConfig(
        reference=str(tmp / "base.canaries.safetensors"), prompts=CANARIES, interval_seconds=1.0
    )
    base = cfg.model_copy(update={"drift": drift, "canaries": canaries})
    adapted = base.model_copy(
        update={
            "name": "lora",
            "adapters": [AdapterConfig(name="strong", path=str(lora), scale=1.0)],
            "attribution": True,
            "policies": ANNOTATE,
            "canaries": canaries.model_copy(update={"interval_seconds": 3600.0}),
        }
    )
    plain = cfg.model_copy(
        update={"name": "plain", "drift": DriftConfig(enabled=False), "canaries": CanaryConfig(enabled=False)}
    )
    settings = Settings(deployments=[base, adapted, plain], host="127.0.0.1", port=0, metrics_port=0)
    srv = ServerThread(settings).start()
    yield srv
    srv.stop()


@pytest.fixture
def stub(server):
    return pb_grpc.GuardrailStub(channel(server.target))


def generate(stub, deployment: str, seed: int, **kw) -> pb.GenerateResponse:
    req = pb.GenerateRequest(deployment=deployment, prompt="a green square", seed=seed, skip_image=True, **kw)
    return stub.Generate(req, timeout=60)


def test_list_deployments_says_what_each_watches(stub):
    infos = {d.name: d for d in stub.ListDeployments(pb.ListDeploymentsRequest(), timeout=10).deployments}
    assert [(a.name, a.scale) for a in infos["lora"].adapters] == [("strong", 1.0)] and infos[
        "lora"
    ].attribution
    assert infos["base"].drift and infos["base"].canaries == 2 and not infos["base"].adapters
    assert not infos["plain"].drift and infos["plain"].canaries == 0


def test_an_adapter_changes_its_deployment_only_and_is_a_metric(server, stub):
    base, plain = (generate(stub, name, 5, return_trajectory=True) for name in ("base", "plain"))
    adapted = generate(stub, "lora", 5, return_trajectory=True)
    final = [r.trajectory.latents[-1].data for r in (base, plain, adapted)]
    assert final[0] == final[1]  # the adapter did not reach the shared base transformer
    assert final[2] != final[0]
    assert value(scrape(server), "latentguard_adapter_scale", deployment="lora", adapter="strong") == 1.0


def test_a_flagged_request_is_attributed_to_the_adapters(stub):
    flagged = [r for r in (generate(stub, "lora", seed) for seed in range(3)) if r.report.verdict != "pass"]
    assert flagged, "the strong LoRA should make requests flagged"
    for resp in flagged:
        att = resp.report.attribution
        assert list(att.adapters) == ["strong"]
        assert att.adapters_caused == (att.verdict_without_adapters == "pass")
    assert any(r.report.attribution.adapters_caused for r in flagged)
    assert not generate(stub, "base", 0).report.HasField("attribution")  # attribution is opt-in


def test_an_artifact_that_stays_without_the_adapters_is_not_attributed_to_them(stub):
    resp = generate(stub, "lora", 0, drill="nan:step=1")
    assert resp.report.verdict == "flag"
    att = resp.report.attribution
    assert att.verdict_without_adapters == "flag" and "non_finite" in att.flagged_without_adapters
    assert not att.adapters_caused


def test_comparable_requests_fill_the_drift_window_and_it_is_scored(server, stub):
    window = value(scrape(server), "latentguard_drift_window_requests", deployment="base")
    generate(stub, "base", 1, drill="blur:step=1")  # drilled: not comparable
    generate(stub, "base", 2, steps=STEPS + 1)  # another schedule: not comparable
    assert value(scrape(server), "latentguard_drift_window_requests", deployment="base") == window < 8
    before = value(scrape(server), "latentguard_drift_evaluations_total", deployment="base")
    for seed in range(10, 18):
        generate(stub, "base", seed)
    server.call(server.server.service.drift.wait())
    text = scrape(server)
    assert value(text, "latentguard_drift_window_requests", deployment="base") == 8
    assert value(text, "latentguard_drift_evaluations_total", deployment="base") - before >= 1
    assert 0 < value(text, "latentguard_drift_pvalue", deployment="base") <= 1
    assert all(value(text, "latentguard_drift_score", deployment="base", method=m) > 0 for m in ("kl", "mmd"))


def test_canaries_of_an_unchanged_model_match_their_reference(stub):
    r = stub.RunCanaries(pb.RunCanariesRequest(deployment="base"), timeout=60)
    assert not r.changed and len(r.canaries) == 2
    assert r.divergence == 0.0  # deterministic on CPU: recorded on this thread, replayed on the worker
    assert all(c.first_divergent_step == -1 for c in r.canaries)


def test_canaries_of_an_adapted_model_say_it_changed(server, stub):
    r = stub.RunCanaries(pb.RunCanariesRequest(deployment="lora"), timeout=60)
    assert r.changed and r.divergence > r.tolerance
    assert all(c.first_divergent_step >= 0 for c in r.canaries)
    text = scrape(server)
    assert value(text, "latentguard_canary_divergence", deployment="lora") == pytest.approx(r.divergence)
    assert value(text, "latentguard_canary_tolerance", deployment="lora") == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("deployment", "code"),
    [("plain", grpc.StatusCode.FAILED_PRECONDITION), ("nope", grpc.StatusCode.NOT_FOUND)],
)
def test_run_canaries_errors(stub, deployment, code):
    with pytest.raises(grpc.RpcError) as err:
        stub.RunCanaries(pb.RunCanariesRequest(deployment=deployment), timeout=10)
    assert err.value.code() == code and deployment in err.value.details()


def test_idle_rounds_run_and_a_busy_server_preempts_them(server):
    def compared() -> float:
        return value(scrape(server), "latentguard_canary_runs_total", deployment="base", outcome="compared")

    before, deadline = compared(), time.monotonic() + 60
    while compared() == before and time.monotonic() < deadline:  # rounds every second while idle
        time.sleep(0.2)
    assert compared() > before
    canaries = server.server.service.canaries
    idle = canaries.primary_busy

    def preempted() -> float:
        return value(scrape(server), "latentguard_canary_runs_total", deployment="lora", outcome="preempted")

    start = preempted()
    canaries.primary_busy = lambda: True
    try:
        assert server.call(canaries.run("lora", preemptible=True)) is None
    finally:
        canaries.primary_busy = idle
    assert preempted() - start == 1


def test_cli_canary_exit_codes(server):
    runner = CliRunner()
    ok = runner.invoke(app, ["canary", "--deployment", "base", "--target", server.target])
    assert ok.exit_code == 0, ok.output
    changed = runner.invoke(app, ["canary", "--deployment", "lora", "--target", server.target])
    assert changed.exit_code == 1 and "changed" in changed.output
    assert (
        runner.invoke(app, ["canary", "--deployment", "base"]).exit_code == 2
    )  # neither --local nor --target


def test_cli_attribute_and_references(files, tmp_path):
    cfg, _, lora = files
    adapted = cfg.model_copy(
        update={"name": "lora", "adapters": [AdapterConfig(name="strong", path=str(lora))]}
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"deployments": [adapted.model_dump(), cfg.model_dump()]}))
    runner = CliRunner()
    out = runner.invoke(
        app,
        [
            "attribute",
            "--deployment",
            "lora",
            "--prompt",
            "a green square",
            "--seed",
            "0",
            "--config",
            str(config),
        ],
    )
    assert out.exit_code == 0, out.output
    assert "without adapters" in out.output
    assert (
        runner.invoke(
            app, ["attribute", "--deployment", "base", "--prompt", "x", "--config", str(config)]
        ).exit_code
        == 2
    )
    written = tmp_path / "c.safetensors"
    out = runner.invoke(
        app, ["canary-reference", "--deployment", "base", "--out", str(written), "--config", str(config)]
    )
    assert out.exit_code == 0 and written.is_file(), out.output
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(default_prompts("calibration")[:32]))
    drift_file = tmp_path / "d.safetensors"
    args = ["--prompts", str(prompts), "--window", "8", "--null-windows", "200", "--out", str(drift_file)]
    out = runner.invoke(app, ["drift-reference", "--deployment", "base", *args, "--config", str(config)])
    assert out.exit_code == 0, out.output
    assert DriftReference.load(drift_file).window == 8 and DriftReference.load(drift_file).runs == 16


def test_configuration_errors_are_clear(files):
    cfg, tmp, lora = files
    with pytest.raises(ModelLoadError, match=r"drift reference .* does not exist"):
        load_deployment(cfg.model_copy(update={"drift": DriftConfig(reference=str(tmp / "missing"))}))
    wrong = cfg.model_copy(update={"drift": DriftConfig(reference=str(tmp / "base.canaries.safetensors"))})
    with pytest.raises(ModelLoadError, match="cannot read drift reference"):
        load_deployment(wrong)
    missing = cfg.model_copy(
        update={"adapters": [AdapterConfig(name="x", path=str(tmp / "none.safetensors"))]}
    )
    with pytest.raises(ModelLoadError, match="adapter x"):
        load_deployment(missing)
    with pytest.raises(ValueError, match=r"16/32-bit variant"):
        DeploymentConfig(
            **{**cfg.model_dump(), "variant": "int4", "adapters": [{"name": "x", "path": str(lora)}]}
        )
    with pytest.raises(ValueError, match="at least one adapter"):
        DeploymentConfig(**{**cfg.model_dump(), "attribution": True})
