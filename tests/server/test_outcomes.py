"""Every request that reaches a known deployment ends in exactly one counted outcome: a verdict (ok,
flagged, aborted), or rejected, error, cancelled. Checked on the real /metrics port."""

from __future__ import annotations

import time

import grpc
import pytest
import torch

from latentguard.server.rpc.client import channel, tensor_frame
from latentguard.v1 import guardrail_pb2 as pb
from latentguard.v1 import guardrail_pb2_grpc as pb_grpc

from .grpc_harness import LONG_RUN, ServerThread, make_settings, scrape, value

SD3 = {"deployment": "tiny-sd3", "family": "sd3", "variant": "fp32"}
FLUX = {"deployment": "tiny-flux", "family": "flux", "variant": "fp32"}


@pytest.fixture(scope="module")
def server():
    srv = ServerThread(make_settings()).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def stub(server):
    return pb_grpc.GuardrailStub(channel(server.target))


class Delta:
    """Counter increases between construction and `of`."""

    def __init__(self, server):
        self.server, self.before = server, scrape(server)

    def of(self, name: str, **labels) -> float:
        return value(scrape(self.server), name, **labels) - value(self.before, name, **labels)

    def outcome(self, outcome: str, labels=SD3) -> float:
        return self.of("latentguard_requests_total", **labels, outcome=outcome)


def eventually(condition, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_runner_that_raises_is_internal_counted_as_error_and_the_server_keeps_serving(
    server, stub, monkeypatch
):
    worker = server.server.service.workers["tiny-sd3"]

    def broken(*args, **kwargs):
        raise RuntimeError("pipeline exploded: secret detail")

    monkeypatch.setattr(worker.runner, "generate_batch", broken)
    d = Delta(server)
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(pb.GenerateRequest(deployment="tiny-sd3", prompt="a fox"), timeout=30)
    assert info.value.code() == grpc.StatusCode.INTERNAL and "secret" not in info.value.details()
    assert d.outcome("error") == 1
    assert d.of("latentguard_generation_seconds_count", deployment="tiny-sd3", outcome="error") == 1
    assert worker.admitted == 0  # the slot came back
    monkeypatch.undo()
    ok = stub.Generate(pb.GenerateRequest(deployment="tiny-sd3", prompt="a fox", steps=2), timeout=30)
    assert ok.report.verdict in ("pass", "flag") and d.outcome("error") == 1


def test_a_client_cancel_is_counted_as_cancelled(server, stub):
    d = Delta(server)
    call = stub.GenerateStream(
        pb.GenerateRequest(deployment="tiny-flux", prompt="a fox", steps=100), timeout=60
    )
    for event in call:
        if event.step.step >= 1:
            call.cancel()
            break
    assert eventually(lambda: d.outcome("cancelled", FLUX) == 1)
    assert d.outcome("error", FLUX) == 0


def test_a_deadline_that_expires_mid_run_is_an_error(server, stub):
    d = Delta(server)
    req = pb.GenerateRequest(deployment="tiny-flux", prompt="a fox", steps=100, skip_image=True, **LONG_RUN)
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(req, timeout=0.6)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert eventually(lambda: d.outcome("error", FLUX) == 1)


def test_inspect_sessions_count_once_whether_they_finish_or_fail(server, stub):
    sigmas = [1.0, 0.5, 0.0]
    noise = torch.randn(1, 16, 32, 32)
    d = Delta(server)
    finished = [tensor_frame(noise, -1, deployment="tiny-sd3", sigmas=sigmas), tensor_frame(noise * 0.5, 0)]
    *verdicts, last = list(stub.Inspect(iter(finished), timeout=30))
    assert last.HasField("report") and len(verdicts) == 1
    assert sum(d.outcome(o) for o in ("ok", "flagged", "aborted")) == 1
    # a session that names its deployment and then sends a bad frame: rejected, once
    broken = [tensor_frame(noise, -1, deployment="tiny-sd3", sigmas=sigmas), tensor_frame(noise[:, :8], 0)]
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Inspect(iter(broken), timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert d.outcome("rejected") == 1
    assert server.server.service.inspect_sessions == 0


def test_refusals_while_warming_and_draining_are_counted_as_rejected():
    srv = ServerThread(make_settings()).start(warm=False)
    stub = pb_grpc.GuardrailStub(channel(srv.target))
    try:
        d = Delta(srv)
        with pytest.raises(grpc.RpcError) as warming:
            stub.Generate(pb.GenerateRequest(deployment="tiny-sd3", prompt="x"), timeout=5)
        assert warming.value.code() == grpc.StatusCode.UNAVAILABLE and d.outcome("rejected") == 1
        srv.call(srv.server.warm())
        srv.server.service.drain()
        with pytest.raises(grpc.RpcError) as draining:
            stub.Generate(pb.GenerateRequest(deployment="tiny-sd3", prompt="x"), timeout=5)
        assert draining.value.code() == grpc.StatusCode.UNAVAILABLE and d.outcome("rejected") == 2
    finally:
        srv.stop()
