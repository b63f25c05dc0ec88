"""Domain errors -> gRPC status codes, in one place.

Anything that is not a typed `LatentguardError` becomes INTERNAL with a generic message (details go
to the server log, not to the caller).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from latentguard.server.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    LatentguardError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from latentguard.v1 import guardrail_pb2 as pb

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Guardrail"].full_name
MAPPED_SERVICES = {SERVICE_NAME, "inference.GRPCInferenceService"}  # ours and the Open Inference Protocol

STATUS = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
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
        service = handler_call_details.method.split("/")[1] if handler is not None else ""
        if service not in MAPPED_SERVICES:
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
