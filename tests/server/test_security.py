"""TLS, mutual TLS with certificate rotation, bearer tokens with per-deployment rights: over real
gRPC on loopback, with a throwaway CA, through the CLI, the Python client and InspectCallback."""

from __future__ import annotations

import shutil
import ssl
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from latentguard.server.cli import app
from latentguard.server.config import AuthConfig, TlsConfig, TokenConfig
from latentguard.server.pipelines.runner import initial_noise
from latentguard.server.rpc.auth import token_hash
from latentguard.server.rpc.client import InspectCallback, channel
from latentguard.server.rpc.security import ClientTls
from latentguard.v1 import guardrail_pb2 as pb
from latentguard.v1 import guardrail_pb2_grpc as pb_grpc

from .grpc_harness import ServerThread, make_settings, run_own_pipeline, value
from .pki import Authority

FULL, FLUX_ONLY = "full-access-token", "flux-only-token"


def code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def small(deployment: str = "tiny-flux") -> pb.GenerateRequest:
    return pb.GenerateRequest(deployment=deployment, prompt="a red circle on a blue background", steps=2)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = Authority(tmp_path_factory.mktemp("pki"))
    return ca, ca.issue("server", server=True), ca.issue("client", server=False)


@pytest.fixture(scope="module")
def secured(pki):
    """TLS (server certificate only) and two tokens: one for everything, one for tiny-flux only."""
    ca, server, _ = pki
    auth = AuthConfig(
        tokens=[
            TokenConfig(name="ops", sha256=token_hash(FULL), deployments=["*"], inspect=True),
            TokenConfig(name="flux-client", sha256=token_hash(FLUX_ONLY), deployments=["tiny-flux"]),
        ]
    )
    tls = TlsConfig(cert=str(server.cert), key=str(server.key))
    srv = ServerThread(make_settings(tls=tls, auth=auth, health_port=0))
    srv.start()
    yield srv, ClientTls(ca=str(ca.ca_file))
    srv.stop()


def test_tls_serves_only_clients_that_trust_its_ca(secured, tmp_path):
    srv, tls = secured
    plain = health_pb2_grpc.HealthStub(channel(srv.target))
    assert (
        code(lambda: plain.Check(health_pb2.HealthCheckRequest(), timeout=5)) == grpc.StatusCode.UNAVAILABLE
    )
    stranger = ClientTls(ca=str(Authority(tmp_path / "other", "another CA").ca_file))
    other = health_pb2_grpc.HealthStub(channel(srv.target, stranger))
    assert (
        code(lambda: other.Check(health_pb2.HealthCheckRequest(), timeout=5)) == grpc.StatusCode.UNAVAILABLE
    )
    trusted = health_pb2_grpc.HealthStub(channel(srv.target, tls))  # health stays open without a token
    assert (
        trusted.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    assert "latentguard_requests_total" in scrape_tls(srv, tls)  # /metrics over TLS, same certificate
    # the plaintext health-only port, for probes that cannot speak TLS, answers health and nothing else
    probe = channel(f"127.0.0.1:{srv.server.health_port}")
    status = health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    unimplemented = pb_grpc.GuardrailStub(probe)
    assert code(lambda: unimplemented.Generate(small(), timeout=5)) == grpc.StatusCode.UNIMPLEMENTED


def scrape_tls(srv, tls: ClientTls) -> str:
    context = ssl.create_default_context(cafile=tls.ca)
    url = f"https://127.0.0.1:{srv.server.metrics_port}/metrics"
    with urllib.request.urlopen(url, context=context, timeout=5) as r:
        return r.read().decode()


def test_tokens_authenticate_and_authorise_per_deployment(secured):
    srv, tls = secured
    before = scrape_tls(srv, tls)
    anonymous = pb_grpc.GuardrailStub(channel(srv.target, tls))
    assert code(lambda: anonymous.Generate(small(), timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    wrong = pb_grpc.GuardrailStub(channel(srv.target, tls, token="not-a-token"))
    assert code(lambda: wrong.Generate(small(), timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    flux = pb_grpc.GuardrailStub(channel(srv.target, tls, token=FLUX_ONLY))
    assert flux.Generate(small("tiny-flux"), timeout=60).report.steps_run == 2
    assert code(lambda: flux.Generate(small("tiny-sd3"), timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
    listed = [d.name for d in flux.ListDeployments(pb.ListDeploymentsRequest(), timeout=10).deployments]
    assert listed == ["tiny-flux"]
    frames = iter([pb.InspectFrame(deployment="tiny-flux", step=-1)])
    assert code(lambda: list(flux.Inspect(frames, timeout=10))) == grpc.StatusCode.PERMISSION_DENIED
    full = pb_grpc.GuardrailStub(channel(srv.target, tls, token=FULL))
    assert full.Generate(small("tiny-sd3"), timeout=60).report.steps_run == 2
    assert len(full.ListDeployments(pb.ListDeploymentsRequest(), timeout=10).deployments) == 4
    text = scrape_tls(srv, tls)
    for reason in ("missing_token", "unknown_token", "deployment_denied", "inspect_denied"):
        name = "latentguard_auth_failures_total"
        assert value(text, name, reason=reason) - value(before, name, reason=reason) == 1, reason
    assert FULL not in text and FLUX_ONLY not in text and "flux-client" not in text


def test_inspect_callback_over_tls_with_a_token(secured, deployments):
    srv, tls = secured
    dep = deployments["tiny-flux"]
    noise = initial_noise(dep, [3], 256, 256)
    cb = InspectCallback(srv.target, "tiny-flux", dep.pipe, noise, 256, 256, tls=tls, token=FULL)
    run_own_pipeline(dep, "a red circle on a blue background", noise, 4, cb)
    assert len(cb.verdicts) == 4 and cb.report is not None and cb.report.steps_run == 4


def test_the_cli_takes_tls_and_a_token(secured, tmp_path, monkeypatch):
    srv, tls = secured
    args = ["generate", "--target", srv.target, "--deployment", "tiny-flux", "--steps", "2"]
    args += ["--prompt", "a red circle on a blue background", "--tls-ca", tls.ca]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "UNAUTHENTICATED" in refused.output
    monkeypatch.setenv("LATENTGUARD_TOKEN", FLUX_ONLY)
    ok = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x.png")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "x.png").read_bytes().startswith(b"\x89PNG")


def test_mutual_tls_and_certificate_rotation(pki, tmp_path):
    ca, server, client = pki
    live = tmp_path / "live"
    live.mkdir()
    for name, source in (("cert.pem", server.cert), ("key.pem", server.key)):
        shutil.copy(source, live / name)
    tls = TlsConfig(
        cert=str(live / "cert.pem"), key=str(live / "key.pem"), client_ca=str(ca.ca_file), metrics=False
    )
    srv = ServerThread(make_settings(tls=tls)).start()
    try:
        mutual = ClientTls(ca=str(ca.ca_file), cert=str(client.cert), key=str(client.key))
        assert (
            pb_grpc.GuardrailStub(channel(srv.target, mutual)).Generate(small(), timeout=60).report.steps_run
            == 2
        )
        server_only = pb_grpc.GuardrailStub(channel(srv.target, ClientTls(ca=str(ca.ca_file))))
        assert code(lambda: server_only.Generate(small(), timeout=10)) == grpc.StatusCode.UNAVAILABLE
        # rotate: a certificate from a new CA, written over the files the server reads
        new_ca = Authority(tmp_path / "new", "rotated CA")
        rotated = new_ca.issue("server", server=True)
        shutil.copy(rotated.key, live / "key.pem")
        shutil.copy(rotated.cert, live / "cert.pem")
        fresh = ClientTls(ca=str(new_ca.ca_file), cert=str(client.cert), key=str(client.key))
        stub = pb_grpc.GuardrailStub(channel(srv.target, fresh))
        assert stub.Generate(small(), timeout=60).report.steps_run == 2
    finally:
        srv.stop()
