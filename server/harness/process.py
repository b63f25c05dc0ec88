"""`latentguard serve` as a child process on free loopback ports (demo, drain tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from latentguard.server.rpc.client import channel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    def __init__(self, grace_seconds: float = 30, config: str | None = None, **popen_kwargs: object):
        self.port, self.metrics_port = free_port(), free_port()
        self.target = f"127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-P",  # not the working directory on sys.path: kernels/ there would shadow HF's `kernels`
            "-m",
            "latentguard.server.cli",
            "serve",
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
            *(["--config", config] if config else []),
        ]
        env = {**os.environ, "LATENTGUARD_GRACE_SECONDS": str(grace_seconds)}
        self.proc = subprocess.Popen(cmd, env=env, **popen_kwargs)  # type: ignore[call-overload]

    def wait_serving(self, timeout: float = 180) -> ServeProcess:
        health = health_pb2_grpc.HealthStub(channel(self.target))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"latentguard serve exited with {self.proc.returncode} before serving")
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return self
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"latentguard serve was not SERVING within {timeout:.0f}s")

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM (drain) and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
