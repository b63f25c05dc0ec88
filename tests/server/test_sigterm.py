"""SIGTERM drains a real `latentguard serve`: requests in flight finish, new ones are refused, exit 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from latentguard.server.client import channel
from latentguard.v1 import guardrail_pb2 as pb
from latentguard.v1 import guardrail_pb2_grpc as pb_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(target: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    health = health_pb2_grpc.HealthStub(channel(target))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become SERVING")


def test_sigterm_loses_no_request_in_flight(tmp_path):
    port, mport = free_port(), free_port()
    env = {**os.environ, "LATENTGUARD_GRACE_SECONDS": "60"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "latentguard.server.cli",
            "serve",
            "--port",
            str(port),
            "--metrics-port",
            str(mport),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    target = f"127.0.0.1:{port}"
    try:
        wait_serving(target, proc)
        stub = pb_grpc.GuardrailStub(channel(target))
        results: list[object] = []

        def call(dep: str) -> None:
            req = pb.GenerateRequest(deployment=dep, prompt="a fox", steps=40, skip_image=True)
            try:
                results.append(stub.Generate(req, timeout=120).report.steps_run)
            except grpc.RpcError as exc:
                results.append(exc.code())

        threads = [threading.Thread(target=call, args=(d,)) for d in ("tiny-sd3", "tiny-sd3", "tiny-flux")]
        for t in threads:
            t.start()
        time.sleep(1.0)  # all three admitted: one running per deployment, one queued
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        try:
            stub.Generate(pb.GenerateRequest(deployment="tiny-flux", prompt="late"), timeout=5)
            late = None
        except grpc.RpcError as exc:
            late = exc.code()
        for t in threads:
            t.join(timeout=120)
        assert results == [40, 40, 40], results
        assert late == grpc.StatusCode.UNAVAILABLE
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
