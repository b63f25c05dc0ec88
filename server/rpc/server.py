"""The assembled sidecar: gRPC server, health, reflection, metrics endpoint, lifecycle and signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from latentguard.server.config import Settings
from latentguard.server.core.service import GuardrailService, deployment_labels
from latentguard.server.metrics import Metrics
from latentguard.server.rpc.auth import AuthInterceptor
from latentguard.server.rpc.interceptors import SERVICE_NAME, ErrorMappingInterceptor
from latentguard.server.rpc.oip import InferenceServicer, add_inference_servicer
from latentguard.server.rpc.security import metrics_tls, server_credentials
from latentguard.server.rpc.servicer import GuardrailServicer
from latentguard.v1 import guardrail_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class Server:
    """The assembled sidecar: gRPC server + health + reflection + metrics endpoint + core service."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None):
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(
            self.registry, deployment_labels(settings), [(s.baseline, s.candidate) for s in settings.shadow]
        )
        self.service = GuardrailService(settings, self.metrics)
        limit = settings.max_message_mb * 1024 * 1024
        interceptors: list[grpc.aio.ServerInterceptor] = [ErrorMappingInterceptor()]
        if settings.auth.enabled:  # first: nothing reaches a servicer unauthenticated
            interceptors.insert(0, AuthInterceptor(settings.auth, self.metrics.auth_failure))
        self.grpc = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                *settings.connections.grpc_options(),
            ],
        )
        pb_grpc.add_GuardrailServicer_to_server(GuardrailServicer(self.service), self.grpc)
        add_inference_servicer(InferenceServicer(self.service), self.grpc)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc
        )
        self.port = self._listen(settings)
        self.health_grpc: grpc.aio.Server | None = None
        if settings.health_port is not None:  # plaintext, health only: for probes that cannot do TLS
            self.health_grpc = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_grpc)
            self.health_port = self.health_grpc.add_insecure_port(f"{settings.host}:{settings.health_port}")
        self.metrics_server: Any = None
        self._stopped = asyncio.Event()

    def _listen(self, settings: Settings) -> int:
        address = f"{settings.host}:{settings.port}"
        try:
            if settings.tls is not None:
                port = self.grpc.add_secure_port(address, server_credentials(settings.tls))
            else:
                port = self.grpc.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
        if not port:
            raise OSError(
                f"cannot listen for gRPC on {address}: the port is taken or the address is not local"
            )
        return port

    async def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def start(self) -> None:
        """Open the gRPC and metrics ports; health stays NOT_SERVING and requests UNAVAILABLE until warm()."""
        await self._set_health(False)
        await self.grpc.start()
        if self.health_grpc is not None:
            await self.health_grpc.start()
        try:
            self.metrics_server = start_http_server(
                self.settings.metrics_port,
                addr=self.settings.host,
                registry=self.registry,
                **metrics_tls(self.settings.tls),
            )
        except OSError as exc:
            await self.grpc.stop(0)
            where = f"{self.settings.host}:{self.settings.metrics_port}"
            raise OSError(f"cannot serve /metrics on {where}: {exc.strerror or exc}") from None
        self.metrics_port = self.metrics_server[0].server_address[1]
        log.info(
            "gRPC on %s:%d, metrics on :%d; warming up", self.settings.host, self.port, self.metrics_port
        )

    async def warm(self) -> None:
        """Load and warm every deployment, then report SERVING."""
        await self.service.start()
        if self.service.state == "serving":
            await self._set_health(True)
            log.info("serving %s", ", ".join(self.service.workers))

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new requests, let those in flight finish (up to grace), stop.

        The port stays open until the requests in flight are answered, so that a request arriving
        meanwhile reaches the service and gets its UNAVAILABLE ("draining, retry elsewhere"): gRPC's
        own shutdown would cancel a call that races it (CANCELLED, which clients do not retry)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.settings.grace_seconds if grace is None else grace)
        self.service.drain()
        await self._set_health(False)
        while self.service.in_flight() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await self.grpc.stop(max(deadline - loop.time(), 0.0))
        if self.health_grpc is not None:
            await self.health_grpc.stop(0)
        await self.service.shadow.wait()  # shadow runs stop at their next step once draining
        self.service.close()
        if self.metrics_server is not None:
            self.metrics_server[0].shutdown()
            self.metrics_server[1].join(timeout=5)
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()


class DrainSignals:
    """SIGTERM / SIGINT start one drain; every later signal is logged and ignored until exit 0.

    Installed with `signal.signal`, not `loop.add_signal_handler`: the event loop removes its own
    handlers when it closes, which restores the default action (terminate), and supervisors (and
    `ServeProcess.terminate`) often repeat SIGTERM while shutdown is still under way. A second SIGINT
    is the one exception, on purpose: an operator pressing Ctrl-C twice gets an immediate exit (130).
    Once the drain is done, SIGTERM is set to SIG_IGN: Python's own finalization resets signals that
    have a Python handler to their default action, which would let a late SIGTERM kill the exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, loop: asyncio.AbstractEventLoop, start_drain: Callable[[], None]):
        self.loop, self.start_drain = loop, start_drain
        self.received: list[str] = []

    def install(self) -> DrainSignals:
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        self.received.append(name)
        if len(self.received) == 1:
            log.info("%s: draining", name)
            # RuntimeError: the loop already closed, so the process is on its way out anyway
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.start_drain)
        elif signum == signal.SIGINT:
            log.warning("second SIGINT: exiting now, without finishing the drain")
            os._exit(130)
        else:
            log.info("%s during drain: ignored (drain started by %s)", name, self.received[0])

    def drained(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


async def serve(settings: Settings) -> None:
    """Serve until a signal drains the server; returns normally (exit 0) once the drain is done."""
    server = Server(settings)
    stopping: list[asyncio.Task] = []

    def start_drain() -> None:
        log.info("draining (grace %.0fs)", settings.grace_seconds)
        stopping.append(asyncio.ensure_future(server.stop()))

    signals = DrainSignals(asyncio.get_running_loop(), start_drain).install()
    await server.start()
    warm = asyncio.ensure_future(server.warm())
    await server.wait()
    if not warm.done():  # drained while still loading
        warm.cancel()
    await asyncio.gather(warm, *stopping, return_exceptions=True)
    signals.drained()
    log.info("drained; exiting")
