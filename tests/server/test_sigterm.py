"""SIGTERM drains a real `latentguard serve`: requests in flight finish, new ones are refused, exit 0."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import grpc

from latentguard.server.client import channel
from latentguard.server.process import ServeProcess
from latentguard.v1 import guardrail_pb2 as pb
from latentguard.v1 import guardrail_pb2_grpc as pb_grpc


def test_sigterm_loses_no_request_in_flight(tmp_path):
    server = ServeProcess(grace_seconds=60, stderr=subprocess.DEVNULL)
    try:
        server.wait_serving()
        target = server.target
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
        server.proc.send_signal(signal.SIGTERM)
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
        assert server.terminate() == 0
    finally:
        server.kill()
