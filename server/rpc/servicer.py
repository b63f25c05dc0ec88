"""The thin servicer: protobuf <-> plain types, then await the core `GuardrailService`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from latentguard.detectors import StepVerdict
from latentguard.server.core.service import Cancellation, GuardrailService
from latentguard.server.errors import DeadlineExceeded, Unavailable
from latentguard.server.rpc import convert, tensors
from latentguard.v1 import guardrail_pb2 as pb
from latentguard.v1 import guardrail_pb2_grpc as pb_grpc


async def _until_idle(frames: AsyncIterator[pb.InspectFrame], idle: float) -> AsyncIterator[pb.InspectFrame]:
    """The frames of a stream, closing it (DEADLINE_EXCEEDED) when nothing arrives for `idle` seconds,
    so that a client that opens a session and goes silent does not hold its slot."""
    it = aiter(frames)
    while True:
        try:
            yield await asyncio.wait_for(anext(it), idle)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise DeadlineExceeded(f"the Inspect stream sent nothing for {idle:g} s; closed") from None


def cancellation(context: grpc.aio.ServicerContext) -> Cancellation:
    remaining = context.time_remaining()
    return Cancellation(timeout=remaining)


class GuardrailServicer(pb_grpc.GuardrailServicer):
    def __init__(self, service: GuardrailService):
        self.service = service

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        result = await self.service.generate(
            convert.request_from_proto(request), cancellation(context), decode=not request.skip_image
        )
        return convert.response_to_proto(result)

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateEvent]:
        cancel = cancellation(context)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[pb.GenerateEvent] = asyncio.Queue()

        def on_step(verdict: StepVerdict) -> None:  # runs on the worker thread
            event = pb.GenerateEvent(step=convert.step_event_to_proto(verdict))
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
        idle = self.service.settings.connections.inspect_idle_seconds
        async with self.service.inspect() as call:
            async for frame in _until_idle(request_iterator, idle):
                latents = tensors.decode(frame.latents, frame.dtype, list(frame.shape))
                verdict = await call.frame(frame.deployment, list(frame.sigmas), frame.step, latents)
                if verdict is not None:
                    yield convert.inspect_verdict_to_proto(verdict)
            report = call.finish()
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

    async def RunCanaries(
        self, request: pb.RunCanariesRequest, context: grpc.aio.ServicerContext
    ) -> pb.RunCanariesResponse:
        return convert.canaries_to_proto(await self.service.run_canaries(request.deployment))
