"""`latentguard serve` refuses to start with a clear message and exit code 2 when it cannot."""

from __future__ import annotations

import socket
import subprocess
import sys

from latentguard.server.harness.process import free_port


def serve(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-P", "-m", "latentguard.server.cli", "serve", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_a_taken_metrics_port_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = serve("--port", str(free_port()), "--metrics-port", str(port))
    assert proc.returncode == 2, proc.stderr
    assert f"cannot serve /metrics on 127.0.0.1:{port}" in " ".join(proc.stderr.split())


def test_a_taken_grpc_port_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = serve("--port", str(port), "--metrics-port", str(free_port()))
    assert proc.returncode == 2, proc.stderr
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in " ".join(proc.stderr.split())


def test_a_malformed_config_names_the_field(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("deployments: [{name: a, model: tiny-sd3, family: sd3, steps: -1}]\n")
    proc = serve("--config", str(cfg))
    assert proc.returncode == 2
    assert f"{cfg}: deployments[0].steps: Input should be greater than or equal to 1" in proc.stderr
