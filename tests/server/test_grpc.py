"""End to end over real gRPC on loopback: every method, health, reflection, every status code."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from latentguard.detectors import DETECTORS
from latentguard.server.core.sessions import InspectSession
from latentguard.server.pipelines.runner import initial_noise
from latentguard.server.rpc.client import InspectCallback, channel, tensor_frame
from latentguard.v1 import guardrail_pb2 as pb
from latentguard.v1 import guardrail_pb2_grpc as pb_grpc

from .grpc_harness import LONG_RUN, ServerThread, make_settings, run_own_pipeline


@pytest.fixture(scope="module")
def server():
    srv = ServerThread(make_settings()).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def stub(server):
    return pb_grpc.GuardrailStub(channel(server.target))


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_generate_returns_png_and_report(stub):
    resp = stub.Generate(
        pb.GenerateRequest(deployment="tiny-sd3", prompt="a red circle on a blue background", seed=7),
        timeout=60,
    )
    assert resp.image_png.startswith(b"\x89PNG")
    assert resp.report.verdict == "pass" and resp.report.steps_run == 12 and len(resp.report.steps) == 12
    names = [d.name for d in resp.report.detectors]
    assert names == [*DETECTORS, "onnx_classifier"]  # every hand-written detector and the classifier
    step = resp.report.steps[-1]
    assert step.HasField("attention_entropy") and 0 < step.attention_rank <= 1


def test_generate_drill_abort_has_no_image(stub):
    resp = stub.Generate(
        pb.GenerateRequest(deployment="tiny-flux", prompt="a fox", drill="nan:step=2"), timeout=60
    )
    assert resp.report.verdict == "abort" and resp.image_png == b"" and resp.report.steps_run == 3


def test_generate_stream_sends_every_step_then_the_result(stub):
    events = list(
        stub.GenerateStream(
            pb.GenerateRequest(
                deployment="tiny-sd3", prompt="a fox", drill="aliasing:step=3,strength=0.5", steps=6
            ),
            timeout=60,
        )
    )
    steps = [e.step for e in events if e.HasField("step")]
    assert [s.step for s in steps] == list(range(6)) and steps[0].total_steps == 6
    assert "spectral_residual" in steps[3].flagged and "spectral_residual" not in steps[2].flagged
    assert events[-1].HasField("result") and events[-1].result.report.verdict == "flag"


def test_list_deployments(stub):
    resp = stub.ListDeployments(pb.ListDeploymentsRequest(), timeout=10)
    by_name = {d.name: d for d in resp.deployments}
    assert set(by_name) == {"tiny-sd3", "tiny-flux", "tiny-sd3-fp8", "tiny-sd3-int4"}
    assert by_name["tiny-flux"].family == "flux" and by_name["tiny-sd3"].default_steps == 12
    assert by_name["tiny-sd3"].profile and "non_finite" in by_name["tiny-sd3"].detectors
    assert by_name["tiny-sd3-int4"].variant == "int4" and by_name["tiny-sd3-fp8"].variant == "fp8"
    # each variant has its own calibration profile, fitted on its own (quantized) weights
    profiles = {by_name[n].profile for n in ("tiny-sd3", "tiny-sd3-fp8", "tiny-sd3-int4")}
    assert len(profiles) == 3 and "" not in profiles
    assert list(by_name["tiny-sd3"].attention_probes) == [0, 1, 2, 3]
    assert list(by_name["tiny-flux"].attention_probes) == [0]
    assert {"attention_entropy", "attention_rank"} <= set(by_name["tiny-flux"].detectors)


def test_health_and_reflection(server):
    ch = channel(server.target)
    health = health_pb2_grpc.HealthStub(ch)
    for service in ("", "latentguard.v1.Guardrail"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(ch)
    (resp,) = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in resp.list_services_response.service}
    assert {"latentguard.v1.Guardrail", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize(
    ("fields", "code", "text"),
    [
        ({"deployment": "nope"}, grpc.StatusCode.NOT_FOUND, "unknown deployment 'nope'"),
        ({"steps": 1000}, grpc.StatusCode.INVALID_ARGUMENT, "steps must be in"),
        ({"prompt": ""}, grpc.StatusCode.INVALID_ARGUMENT, "prompt is empty"),
        ({"width": 100}, grpc.StatusCode.INVALID_ARGUMENT, "multiple of 32"),
        ({"drill": "aliasing:step=x"}, grpc.StatusCode.INVALID_ARGUMENT, "malformed drill"),
    ],
)
def test_bad_requests_get_the_right_status_and_the_server_keeps_serving(stub, fields, code, text):
    req = pb.GenerateRequest(**{"deployment": "tiny-sd3", "prompt": "a fox", **fields})
    got, details = code_of(lambda: stub.Generate(req, timeout=10))
    assert got == code and text in details
    assert stub.Generate(
        pb.GenerateRequest(deployment="tiny-sd3", prompt="ok", steps=2), timeout=30
    ).report.verdict


def test_admission_refuses_beyond_queue_with_resource_exhausted(stub, server):
    # tiny-sd3 admits 1 running + 1 queued; the rest are refused at once, the admitted ones all finish
    req = pb.GenerateRequest(deployment="tiny-sd3", prompt="a fox", steps=60, skip_image=True)
    futures = [stub.Generate.future(req, timeout=120) for _ in range(5)]
    codes, ok = [], 0
    for f in futures:
        try:
            ok += f.result().report.steps_run == 60
        except grpc.RpcError as exc:
            codes.append(exc.code())
            assert "at capacity" in exc.details()
    assert ok == 2 and codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3


def test_deadline_stops_denoising_and_returns_deadline_exceeded(stub, server):
    req = pb.GenerateRequest(deployment="tiny-flux", prompt="a fox", steps=100, skip_image=True, **LONG_RUN)
    got, _ = code_of(lambda: stub.Generate(req, timeout=0.6))
    assert got == grpc.StatusCode.DEADLINE_EXCEEDED
    record = _wait_for_record(server, "tiny-flux", "error")
    assert 0 < record.steps_run < 100


def test_client_cancel_stops_denoising_within_a_step(stub, server):
    call = stub.GenerateStream(
        pb.GenerateRequest(deployment="tiny-flux", prompt="a fox", steps=100), timeout=60
    )
    seen = 0
    for event in call:
        seen = event.step.step
        if seen >= 2:
            call.cancel()
            break
    record = _wait_for_record(server, "tiny-flux", "cancelled")
    assert record.steps_run <= seen + 3 < 100, (
        record
    )  # the cancel lands within a step or two of the last event


def _wait_for_record(server, deployment, outcome, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in reversed(server.server.service.recent):
            if record.deployment == deployment and record.outcome == outcome:
                return record
        time.sleep(0.05)
    raise AssertionError(f"no {outcome} record for {deployment}: {list(server.server.service.recent)}")


def test_unexpected_errors_are_internal_with_a_generic_message(stub, server, monkeypatch):
    async def boom(*args, **kwargs):
        raise RuntimeError("secret stack detail")

    monkeypatch.setattr(server.server.service, "generate", boom)
    got, details = code_of(
        lambda: stub.Generate(pb.GenerateRequest(deployment="tiny-sd3", prompt="x"), timeout=10)
    )
    assert got == grpc.StatusCode.INTERNAL and "secret" not in details


def test_inspect_sidecar_matches_the_in_process_guard(server, deployments):
    """The sidecar scores a pipeline it does not run exactly as the wrapped runner would."""
    dep = deployments["tiny-sd3"]
    noise = initial_noise(dep, [21], 256, 256)
    cb = InspectCallback(server.target, "tiny-sd3", dep.pipe, noise, 256, 256)
    run_own_pipeline(dep, "a red fox", noise, 12, cb, guidance_scale=dep.config.guidance_scale)
    assert [v.step for v in cb.verdicts] == list(range(12)) and {v.verdict for v in cb.verdicts} == {"pass"}
    assert cb.report is not None and cb.report.steps_run == 12 and cb.report.verdict == "pass"
    from latentguard.server.pipelines.requests import GenerateRequest, resolve
    from latentguard.server.pipelines.runner import PipelineRunner

    local = PipelineRunner(dep).generate(
        resolve(GenerateRequest("tiny-sd3", "a red fox", seed=21), dep, _limits()), decode=False
    )
    # the sidecar sees latents only: the attention detectors run in the wrapped runner alone
    latent_only = [d for d in local.report.detectors if not d.name.startswith("attention_")]
    assert len(latent_only) == len(local.report.detectors) - 2
    for remote, here in zip(cb.report.detectors, latent_only, strict=True):
        assert remote.name == here.name and remote.score == pytest.approx(here.score, rel=1e-3, abs=1e-3)


def test_inspect_aborts_the_external_pipeline_on_nan(server, deployments):
    dep = deployments["tiny-flux"]
    noise = initial_noise(dep, [3], 256, 256)
    cb = InspectCallback(server.target, "tiny-flux", dep.pipe, noise, 256, 256)
    steps_seen = []

    def corrupting(pipe, step, t, kwargs):
        steps_seen.append(step)
        if step == 4:
            kwargs["latents"][0, 0, 0] = float("nan")
        cb(pipe, step, t, kwargs)
        return {"latents": kwargs["latents"]}

    run_own_pipeline(dep, "a fox", noise, 12, corrupting)
    assert cb.verdicts[-1].verdict == "abort" and "non_finite" in cb.verdicts[-1].flagged
    assert steps_seen == [0, 1, 2, 3, 4]  # interrupted: no step after the abort ran
    assert cb.report is not None and cb.report.verdict == "abort" and cb.report.aborted_at_step == 4


def test_pipelined_inspect_gives_the_blocking_verdicts_and_aborts_one_step_later(server, deployments):
    """Pipelined mode reads each verdict one step later; the sidecar sees the same frames, so the
    verdicts are the blocking ones, and an abort stops the pipeline at the step after."""
    dep = deployments["tiny-flux"]
    noise = initial_noise(dep, [3], 256, 256)

    def drive(pipelined: bool, corrupt_at: int | None) -> tuple[InspectCallback, list[int]]:
        cb = InspectCallback(server.target, "tiny-flux", dep.pipe, noise, 256, 256, pipelined=pipelined)
        steps_seen: list[int] = []

        def callback(pipe, step, t, kwargs):
            steps_seen.append(step)
            if step == corrupt_at:
                kwargs["latents"][0, 0, 0] = float("nan")
            return cb(pipe, step, t, kwargs)

        run_own_pipeline(dep, "a fox", noise, 8, callback)
        return cb, steps_seen

    def summary(cb: InspectCallback) -> list[tuple]:
        return [(v.step, v.verdict, tuple(v.flagged), tuple(sorted(v.scores.items()))) for v in cb.verdicts]

    blocking, _ = drive(False, None)
    pipelined, seen = drive(True, None)
    assert seen == list(range(8)) and summary(pipelined) == summary(blocking)
    assert [v.step for v in pipelined.verdicts] == list(range(8))
    assert pipelined.report is not None and pipelined.report.verdict == blocking.report.verdict == "pass"

    blocking, seen_blocking = drive(False, 4)
    pipelined, seen_pipelined = drive(True, 4)
    assert seen_blocking == [0, 1, 2, 3, 4] and seen_pipelined == [0, 1, 2, 3, 4, 5]
    assert summary(pipelined)[:5] == summary(blocking)
    assert pipelined.verdicts[4].verdict == "abort" and "non_finite" in pipelined.verdicts[4].flagged
    assert [v.step for v in pipelined.verdicts] == list(range(6))  # the extra step is scored too
    assert pipelined.report.verdict == "abort" and pipelined.report.aborted_at_step == 4


def test_inspect_runs_its_torch_work_on_the_pinned_inspect_threads(stub, monkeypatch):
    """Opening a session converts the initial latents to float32. On the event loop that gave the
    loop's thread an OpenMP team of its own, and every later Generate of a `latentguard serve`
    process ran 1.45x slower (bench_service.py's Inspect row; server/core/threads.py says why). The
    opening frame and every step run on the pinned lg-inspect threads."""
    threads: list[str] = []
    real_init, real_step = InspectSession.__init__, InspectSession.step

    def init(self, *args):
        threads.append(threading.current_thread().name)
        real_init(self, *args)

    def step(self, *args):
        threads.append(threading.current_thread().name)
        return real_step(self, *args)

    monkeypatch.setattr(InspectSession, "__init__", init)
    monkeypatch.setattr(InspectSession, "step", step)
    x = torch.randn(1, 16, 32, 32, dtype=torch.bfloat16)
    frames = [tensor_frame(x, -1, deployment="tiny-sd3", sigmas=[1.0, 0.5, 0.0]), tensor_frame(x, 0)]
    assert len(list(stub.Inspect(iter(frames), timeout=30))) == 2  # a verdict, then the report
    assert len(threads) == 2 and all(name.startswith("lg-inspect") for name in threads), threads


def test_inspect_rejects_malformed_frames(stub):
    sigmas = [1.0, 0.5, 0.0]
    good = torch.zeros(1, 16, 8, 8)
    cases = [
        [tensor_frame(good, 0, deployment="tiny-sd3", sigmas=sigmas)],  # first frame must be step -1
        [
            pb.InspectFrame(
                deployment="tiny-sd3",
                sigmas=sigmas,
                step=-1,
                latents=b"123",
                dtype="float32",
                shape=[1, 16, 8, 8],
            )
        ],
        [tensor_frame(good, -1, deployment="tiny-sd3", sigmas=sigmas), tensor_frame(good[:, :8], 0)],
        [tensor_frame(good, -1, deployment="tiny-sd3", sigmas=sigmas), tensor_frame(good, 1)],
        [
            pb.InspectFrame(
                deployment="tiny-sd3", sigmas=sigmas, step=-1, latents=b"", dtype="int8", shape=[1]
            )
        ],
    ]
    for frames in cases:
        got, details = code_of(lambda f=frames: list(stub.Inspect(iter(f), timeout=10)))
        assert got == grpc.StatusCode.INVALID_ARGUMENT, details
    frame = tensor_frame(good, -1, deployment="nope", sigmas=sigmas)
    assert code_of(lambda: list(stub.Inspect(iter([frame]), timeout=10)))[0] == grpc.StatusCode.NOT_FOUND


def test_unavailable_while_warming_then_serving():
    srv = ServerThread(make_settings()).start(warm=False)
    try:
        ch = channel(srv.target)
        health = health_pb2_grpc.HealthStub(ch)
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            == health_pb2.HealthCheckResponse.NOT_SERVING
        )
        stub = pb_grpc.GuardrailStub(ch)
        got, details = code_of(
            lambda: stub.Generate(pb.GenerateRequest(deployment="tiny-sd3", prompt="x"), timeout=5)
        )
        assert got == grpc.StatusCode.UNAVAILABLE and "warming" in details
        srv.call(srv.server.warm())
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    finally:
        srv.stop()


def _limits():
    from latentguard.server.config import Limits

    return Limits()
