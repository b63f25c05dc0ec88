"""The gRPC transport: a thin servicer, one error-mapping interceptor, health, reflection, lifecycle.

The servicer only converts protobuf <-> plain types and awaits the core `GuardrailService`.
Domain errors become status codes in `ErrorMappingInterceptor` alone; anything unexpected becomes
INTERNAL with a generic message (details go to the log, not to the caller).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from latentguard.detectors import RequestGuard
from latentguard.server import convert, tensors
from latentguard.server.config import Settings
from latentguard.server.errors import (
    DeadlineExceeded,
    InvalidArgument,
    LatentguardError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from latentguard.server.metrics import Metrics
from latentguard.server.service import (
    Cancellation,
    GuardrailService,
    InspectSession,
    deployment_labels,
)
from latentguard.v1 import guardrail_pb2 as pb
from latentguard.v1 import guardrail_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Guardrail"].full_name

STATUS = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_for(exc: LatentguardError) -> grpc.StatusCode:
    for cls, code in STATUS.items():
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(f"/{SERVICE_NAME}/"):
            return handler

        async def fail(exc: Exception, context: grpc.aio.ServicerContext) -> None:
            if isinstance(exc, LatentguardError) and status_for(exc) != grpc.StatusCode.INTERNAL:
                await context.abort(status_for(exc), str(exc))
            log.exception("internal error in %s", handler_call_details.method, exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")

        passthrough = (grpc.aio.AbortError, asyncio.CancelledError)
        kw = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await inner_uu(request, context)
                except passthrough:
                    raise
                except Exception as exc:
                    await fail(exc, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, **kw)

        inner_stream = handler.unary_stream or handler.stream_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in inner_stream(request, context):
                    yield item
            except passthrough:
                raise
            except Exception as exc:
                await fail(exc, context)

        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(stream, **kw)
        return grpc.stream_stream_rpc_method_handler(stream, **kw)


def _cancellation(context: grpc.aio.ServicerContext) -> Cancellation:
    remaining = context.time_remaining()
    return Cancellation(timeout=remaining)


class GuardrailServicer(pb_grpc.GuardrailServicer):
    def __init__(self, service: GuardrailService):
        self.service = service

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        result = await self.service.generate(
            convert.request_from_proto(request), _cancellation(context), decode=not request.skip_image
        )
        return convert.response_to_proto(result)

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateEvent]:
        cancel = _cancellation(context)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[pb.GenerateEvent] = asyncio.Queue()

        def on_step(step: int, guard: RequestGuard) -> None:  # runs on the worker thread
            scores = {n: float(v[step][0]) for n, v in guard.scores.items() if v[step].isfinite().all()}
            flagged = [n for n, fs in guard.first_step.items() if 0 <= int(fs[0]) <= step]
            event = pb.GenerateEvent(
                step=pb.StepEvent(
                    step=step, total_steps=len(guard.sigmas) - 1, scores=scores, flagged=flagged
                )
            )
            loop.call_soon_threadsafe(events.put_nowait, event)

        task = asyncio.ensure_future(
            self.service.generate(
                convert.request_from_proto(request), cancel, on_step=on_step, decode=not request.skip_image
            )
        )
        try:
            while not task.done() or not events.empty():
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                else:
                    getter.cancel()
            result = task.result()
        except asyncio.CancelledError:
            task.cancel()  # the core service stops denoising at the next step and records the cancel
            raise
        yield pb.GenerateEvent(result=convert.response_to_proto(result))

    async def Inspect(
        self, request_iterator: AsyncIterator[pb.InspectFrame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.InspectVerdict]:
        session: InspectSession | None = None
        with self.service.inspect_admission():
            async for frame in request_iterator:
                latents = tensors.decode(frame.latents, frame.dtype, list(frame.shape))
                if session is None:
                    if frame.step != -1:
                        raise InvalidArgument(
                            "the first Inspect frame must be the initial noise, with step = -1"
                        )
                    session = await self.service.open_session(frame.deployment, list(frame.sigmas), latents)
                    continue
                verdict, flagged, scores = await self.service.inspect_step(session, frame.step, latents)
                yield pb.InspectVerdict(step=frame.step, verdict=verdict, flagged=flagged, scores=scores)
            if session is None:
                raise InvalidArgument("Inspect stream closed before its first frame")
            report = self.service.finish_session(session)
            yield pb.InspectVerdict(
                step=report.steps_run - 1, verdict=report.verdict, report=convert.report_to_proto(report)
            )

    async def ListDeployments(
        self, request: pb.ListDeploymentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDeploymentsResponse:
        if self.service.state == "warming":
            raise Unavailable("latentguard is warming up")
        return pb.ListDeploymentsResponse(
            deployments=[convert.deployment_to_proto(d) for d in self.service.deployments()]
        )


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
        self.grpc = grpc.aio.server(
            interceptors=[ErrorMappingInterceptor()],
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
        )
        pb_grpc.add_GuardrailServicer_to_server(GuardrailServicer(self.service), self.grpc)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc
        )
        self.port = self.grpc.add_insecure_port(f"{settings.host}:{settings.port}")
        self.metrics_server: Any = None
        self._stopped = asyncio.Event()

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
        self.metrics_server = start_http_server(
            self.settings.metrics_port, addr=self.settings.host, registry=self.registry
        )
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
        """Drain: NOT_SERVING, refuse new requests, let those in flight finish (up to grace), stop."""
        self.service.drain()
        await self._set_health(False)
        await self.grpc.stop(self.settings.grace_seconds if grace is None else grace)
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
            try:
                self.loop.call_soon_threadsafe(self.start_drain)
            except RuntimeError:  # the loop already closed: the process is on its way out anyway
                pass
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
