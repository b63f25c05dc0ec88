"""Transport security: server TLS / mutual TLS with certificates read again when their files change,
and the client side (channel credentials, bearer token) shared by the CLI, the Python client and
InspectCallback."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from latentguard.server.config import TlsConfig

log = logging.getLogger(__name__)


class CertificateFiles:
    """The server's certificate, key and client CA; `fetch` (called by gRPC at each new handshake)
    returns a new configuration only when a file changed, so rotation needs no restart."""

    def __init__(self, tls: TlsConfig):
        self.tls = tls
        self.stamp = self._stamp()

    def _paths(self) -> list[str]:
        return [p for p in (self.tls.cert, self.tls.key, self.tls.client_ca) if p]

    def _stamp(self) -> tuple[tuple[int, int], ...]:
        return tuple((os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in self._paths())

    def configuration(self) -> Any:
        ca = Path(self.tls.client_ca).read_bytes() if self.tls.client_ca else None
        pair = (Path(self.tls.key).read_bytes(), Path(self.tls.cert).read_bytes())
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)

    def fetch(self) -> Any:
        try:
            stamp = self._stamp()
            if stamp == self.stamp:
                return None
            config = self.configuration()
        except (OSError, ValueError):  # mid-rotation (a file missing or half written): keep the old one
            log.warning(
                "TLS files %s changed but cannot be read yet; keeping the current ones", self._paths()
            )
            return None
        self.stamp = stamp
        log.info("TLS certificate reloaded from %s", self.tls.cert)
        return config


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    files = CertificateFiles(tls)
    return grpc.dynamic_ssl_server_credentials(
        files.configuration(), files.fetch, require_client_authentication=tls.client_ca is not None
    )


def metrics_tls(tls: TlsConfig | None) -> dict[str, Any]:
    """start_http_server's TLS arguments (read once at start)."""
    if tls is None or not tls.metrics:
        return {}
    extra: dict[str, Any] = {"certfile": tls.cert, "keyfile": tls.key}
    if tls.client_ca:
        extra |= {"client_cafile": tls.client_ca, "client_auth_required": True}
    return extra


@dataclass(frozen=True)
class ClientTls:
    """What a client needs for TLS: the CA that signed the server's certificate, and for mutual TLS
    its own certificate and key (PEM files)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token: str):
        self.header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        # grpc hands interceptors its own namedtuple of call details
        return details._replace(metadata=[*(details.metadata or []), self.header])

    def intercept_unary_unary(self, continuation: Callable, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Callable, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Callable, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation: Callable, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


def client_channel(
    target: str, options: list[tuple[str, Any]], tls: ClientTls | None = None, token: str | None = None
) -> grpc.Channel:
    """A channel to `target`: TLS when `tls` is given, the bearer token on every call when given."""
    if tls is not None:
        ch = grpc.secure_channel(target, tls.credentials(), options=options)
    else:
        ch = grpc.insecure_channel(target, options=options)
    return grpc.intercept_channel(ch, _BearerToken(token)) if token else ch
