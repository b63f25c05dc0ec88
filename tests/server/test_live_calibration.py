"""Calibration from live traffic (core/live_calibration.py): a deployment without a profile serves
annotate-only, collects its requests' statistics, then fits, thresholds and activates a profile equal
to offline calibration on the same runs; a restart resumes."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file, save_file

from latentguard.detectors import CalibrationProfile, calibrate_detectors
from latentguard.server.config import LiveCalibrationConfig, Settings, builtin_deployments
from latentguard.server.core.live_calibration import is_fit_prompt
from latentguard.server.offline.trajectories import LocalCollector, default_prompts
from latentguard.server.pipelines.deployments import load_deployment
from latentguard.server.rpc.client import channel
from latentguard.v1 import guardrail_pb2 as pb
from latentguard.v1 import guardrail_pb2_grpc as pb_grpc
from tests.server.grpc_harness import ServerThread, scrape, value

FPR = 0.4  # a test-sized target: about 70 requests instead of about 2400 at 1%


def live_settings(state_dir, **live) -> Settings:
    sd3 = builtin_deployments()[0].model_copy(
        update={
            "name": "live-sd3",
            "steps": 3,
            "width": 128,
            "height": 128,
            "live_calibration": LiveCalibrationConfig(state_dir=str(state_dir), fpr=FPR, **live),
            "max_queue": 0,
        }
    )
    return Settings(deployments=[sd3], host="127.0.0.1", port=0, metrics_port=0, warmup=False)


def info(stub) -> pb.DeploymentInfo:
    return stub.ListDeployments(pb.ListDeploymentsRequest(), timeout=10).deployments[0]


def test_a_deployment_calibrates_from_its_traffic_and_matches_offline_calibration(tmp_path):
    settings = live_settings(tmp_path)
    prompts = default_prompts("evaluation")
    server = ServerThread(settings).start()
    sent: list[tuple[str, int]] = []
    try:
        stub = pb_grpc.GuardrailStub(channel(server.target))
        start = info(stub)
        assert start.calibration == "collecting" and start.calibration_runs == 0
        assert start.detectors == ["non_finite"]
        needed = start.calibration_runs_needed
        assert 40 <= needed <= 80  # 36-45 held-out runs for 10-13 detectors at 40%, and half as many fit
        report = None
        for i in range(3 * 150):
            if info(stub).calibration == "profile":
                break
            prompt, seed = prompts[i], 10_000 + i
            report = stub.Generate(
                pb.GenerateRequest(deployment="live-sd3", prompt=prompt, seed=seed), timeout=60
            ).report
            sent.append((prompt, seed))
            # the calibration window's requests are never reported as passed by the full guard
            assert report.calibration in ("collecting", "profile")
            if report.calibration == "collecting":
                assert [d.name for d in report.detectors] == ["non_finite"]
        live = info(stub)
        assert live.calibration == "profile" and len(live.detectors) > 8, live
        after = stub.Generate(
            pb.GenerateRequest(deployment="live-sd3", prompt="a red circle", seed=1), timeout=60
        )
        assert after.report.calibration == "profile" and after.report.profile == live.profile
        text = scrape(server)
        collected = value(text, "latentguard_calibration_runs", deployment="live-sd3")
        assert collected >= value(text, "latentguard_calibration_runs_needed", deployment="live-sd3") > 0
    finally:
        server.stop()

    (path,) = tmp_path.glob("live-sd3.*.live-*.profile.json")
    profile = CalibrationProfile.load(path)
    n = profile.report.fit_runs + profile.report.calibration_runs
    assert n == collected >= needed
    assert profile.notes["source"] == "live traffic" and profile.report.target_fpr == FPR

    # offline: the same requests (the first n sent), the same split, the same calibration
    dep = load_deployment(settings.deployments[0], with_profile=False)
    runs = LocalCollector(dep, batch_size=1).collect(sent[:n])
    fit = [i for i, (prompt, _) in enumerate(sent[:n]) if is_fit_prompt(prompt)]
    held = [i for i in range(n) if i not in set(fit)]
    dets, _ = calibrate_detectors(
        runs.stats.index(fit_index(fit)), runs.stats.index(fit_index(held)), runs.sigmas, FPR
    )
    live_thresholds = {name: state["threshold"] for name, state in profile.detectors.items()}
    assert live_thresholds == pytest.approx({name: d.threshold for name, d in dets.items()}, rel=1e-4)

    # a restart goes live at once with the saved profile
    server = ServerThread(settings).start()
    try:
        restarted = info(pb_grpc.GuardrailStub(channel(server.target)))
        assert restarted.calibration == "profile" and restarted.profile == live.profile
    finally:
        server.stop()


def fit_index(rows: list[int]):
    import torch

    return torch.tensor(rows, dtype=torch.long)


def test_a_restart_resumes_the_runs_collected_so_far(tmp_path):
    settings = live_settings(tmp_path, checkpoint_every=4)
    server = ServerThread(settings).start()
    try:
        stub = pb_grpc.GuardrailStub(channel(server.target))
        for i in range(9):
            stub.Generate(
                pb.GenerateRequest(deployment="live-sd3", prompt=f"a blue square {i}", seed=i), timeout=60
            )
        # requests off the defaults (size) or drilled are not collected
        stub.Generate(
            pb.GenerateRequest(deployment="live-sd3", prompt="x", width=256, height=256), timeout=60
        )
        stub.Generate(pb.GenerateRequest(deployment="live-sd3", prompt="y", drill="nan:step=1"), timeout=60)
        assert info(stub).calibration_runs == 9
    finally:
        server.stop()
    server = ServerThread(settings).start()
    try:
        resumed = info(pb_grpc.GuardrailStub(channel(server.target)))
        assert resumed.calibration == "collecting" and resumed.calibration_runs == 8  # the last checkpoint
    finally:
        server.stop()
    # runs saved by a version whose statistics lacked a field are not resumed, and nothing fails
    (state,) = tmp_path.glob("live-sd3.*.live.safetensors")
    older = {k: v for k, v in load_file(str(state)).items() if not k.endswith(".change_phase_contrast")}
    save_file(older, str(state))
    server = ServerThread(settings).start()
    try:
        anew = info(pb_grpc.GuardrailStub(channel(server.target)))
        assert anew.calibration == "collecting" and anew.calibration_runs == 0
    finally:
        server.stop()


def test_live_calibration_and_an_explicit_profile_exclude_each_other():
    with pytest.raises(ValueError, match="live_calibration calibrates a deployment without a profile"):
        builtin_deployments()[0].model_validate(
            {**builtin_deployments()[0].model_dump(), "profile": "p.json", "live_calibration": True}
        )
    assert (
        builtin_deployments()[0]
        .model_validate({**builtin_deployments()[0].model_dump(), "live_calibration": True})
        .live_calibration
        == LiveCalibrationConfig()
    )
