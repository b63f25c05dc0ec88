"""Signals drain a real `latentguard serve`: requests in flight finish, new ones are refused, exit 0
whatever signals follow. Synchronised on what the server reports (admission gauge, health), not on
sleeps, so it does not depend on the machine's speed."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from latentguard.server.harness.process import ServeProcess
from latentguard.server.rpc.client import channel
from latentguard.v1 import guardrail_pb2 as pb
from latentguard.v1 import guardrail_pb2_grpc as pb_grpc

from .grpc_harness import value

STEPS = 100  # long enough that the requests are still denoising when the signal lands


def wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not {what} within {timeout:.0f}s")
        time.sleep(0.02)


def admitted(server: ServeProcess, deployment: str) -> float:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        return value(r.read().decode(), "latentguard_admitted_requests", deployment=deployment)


def not_serving(server: ServeProcess) -> bool:
    health = health_pb2_grpc.HealthStub(channel(server.target))
    try:
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
    except grpc.RpcError:
        return True
    return status != health_pb2.HealthCheckResponse.SERVING


def start_requests(server: ServeProcess, deployments: list[str]) -> tuple[list[threading.Thread], list]:
    stub = pb_grpc.GuardrailStub(channel(server.target))
    results: list[object] = []

    def call(dep: str) -> None:
        req = pb.GenerateRequest(deployment=dep, prompt="a fox", steps=STEPS, skip_image=True)
        try:
            results.append(stub.Generate(req, timeout=300).report.steps_run)
        except grpc.RpcError as exc:
            results.append(exc.code())

    threads = [threading.Thread(target=call, args=(d,)) for d in deployments]
    for t in threads:
        t.start()
    wait_until(
        lambda: (
            admitted(server, "tiny-sd3") == deployments.count("tiny-sd3")
            and admitted(server, "tiny-flux") == deployments.count("tiny-flux")
        ),
        "all requests admitted",
    )
    return threads, results


def sigterm_until_exit(server: ServeProcess, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while server.proc.poll() is None and time.monotonic() < deadline:
        try:
            server.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            break
        time.sleep(0.005)
    return server.proc.wait(timeout=10)


@pytest.mark.parametrize(
    "first",
    [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],  # SIGINT: `make test-slow`
    ids=["SIGTERM", "SIGINT"],
)
def test_a_drain_loses_no_request_in_flight_and_exits_0_whatever_signals_follow(first):
    server = ServeProcess(grace_seconds=120, stderr=subprocess.DEVNULL)
    try:
        server.wait_serving()
        # one running per deployment, one queued behind tiny-sd3's
        threads, results = start_requests(server, ["tiny-sd3", "tiny-sd3", "tiny-flux"])
        server.proc.send_signal(first)
        wait_until(lambda: not_serving(server), "NOT_SERVING after the signal")
        server.proc.send_signal(signal.SIGTERM)  # a supervisor repeating itself: ignored
        stub = pb_grpc.GuardrailStub(channel(server.target))
        with pytest.raises(grpc.RpcError) as late:
            stub.Generate(pb.GenerateRequest(deployment="tiny-flux", prompt="late"), timeout=10)
        assert late.value.code() == grpc.StatusCode.UNAVAILABLE
        for t in threads:
            t.join(timeout=300)
        assert results == [STEPS] * 3, results
        # SIGTERM every few milliseconds until the process is gone, so some land in every phase of
        # shutdown, the one after the event loop has closed included
        assert sigterm_until_exit(server) == 0
    finally:
        server.kill()


def test_a_second_sigint_exits_at_once_with_130():
    server = ServeProcess(grace_seconds=120, stderr=subprocess.DEVNULL)
    try:
        server.wait_serving()
        threads, _ = start_requests(server, ["tiny-sd3", "tiny-sd3"])
        server.proc.send_signal(signal.SIGINT)
        wait_until(lambda: not_serving(server), "NOT_SERVING after the first SIGINT")
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(timeout=30) == 130
        for t in threads:
            t.join(timeout=60)
    finally:
        server.kill()
