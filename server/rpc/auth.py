"""Authentication and authorisation: bearer tokens in gRPC metadata, checked by one interceptor.

Tokens are configured as SHA-256 hashes (never in plain text), each with the deployments it may use
("*" for all) and whether it may call Inspect. A call without a valid token gets UNAUTHENTICATED; a
valid token outside its rights gets PERMISSION_DENIED, decided from the request itself: the
`deployment` of Generate / GenerateStream, the first frame of an Inspect stream; ListDeployments
lists only what the token may use. Health and reflection stay open (configurable). Every refusal
counts in latentguard_auth_failures_total{reason}; the token's name goes to the log only.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from latentguard.server.config import AuthConfig, TokenConfig
from latentguard.server.metrics import AUTH_FAILURE_REASONS
from latentguard.v1 import guardrail_pb2 as pb

log = logging.getLogger(__name__)
__all__ = ["AUTH_FAILURE_REASONS", "AuthInterceptor", "TokenTable", "token_hash"]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenTable:
    def __init__(self, tokens: list[TokenConfig]):
        self.by_hash = {t.sha256: t for t in tokens}

    def __bool__(self) -> bool:
        return bool(self.by_hash)

    def lookup(self, token: str) -> TokenConfig | None:
        return self.by_hash.get(token_hash(token))


def may_use(principal: TokenConfig, deployment: str) -> bool:
    return "*" in principal.deployments or deployment in principal.deployments


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, config: AuthConfig, on_failure: Callable[[str], None]):
        self.table = TokenTable(config.all_tokens())
        self.open_services = set(config.open_services)
        self.on_failure = on_failure

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self.table or method.split("/")[1] in self.open_services:
            return handler
        token = _bearer(handler_call_details.invocation_metadata)
        principal = self.table.lookup(token) if token else None
        if principal is None:
            reason = "missing_token" if token is None else "unknown_token"
            return _refusing(handler, reason, self.on_failure)
        return _authorising(handler, principal, method, self.on_failure)


def _kinds(handler: Any) -> dict[str, Any]:
    return {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }


async def _deny(context: grpc.aio.ServicerContext, code: grpc.StatusCode, reason: str, on_failure, text: str):
    on_failure(reason)
    await context.abort(code, text)


def _refusing(handler: Any, reason: str, on_failure: Callable[[str], None]) -> Any:
    text = (
        "missing bearer token (metadata authorization: Bearer <token>)"
        if reason == "missing_token"
        else ("unknown bearer token")
    )

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _deny(context, grpc.StatusCode.UNAUTHENTICATED, reason, on_failure, text)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await _deny(context, grpc.StatusCode.UNAUTHENTICATED, reason, on_failure, text)
        yield  # pragma: no cover (abort raises)

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, **_kinds(handler))
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **_kinds(handler))
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, **_kinds(handler))
    return grpc.stream_stream_rpc_method_handler(refuse_stream, **_kinds(handler))


def _authorising(handler: Any, principal: TokenConfig, method: str, on_failure: Callable[[str], None]) -> Any:
    model_call = method.endswith(("/ModelReady", "/ModelMetadata"))  # the Open Inference Protocol's

    async def check(request: Any, context: grpc.aio.ServicerContext) -> None:
        deployment = getattr(request, "deployment", "") or getattr(request, "model_name", "")
        if model_call:
            deployment = request.name
        if deployment and not may_use(principal, deployment):
            log.info("token %s may not use deployment %s", principal.name, deployment)
            await _deny(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "deployment_denied",
                on_failure,
                f"this token may not use deployment {deployment!r}",
            )

    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await check(request, context)
            response = await inner_uu(request, context)
            if isinstance(response, pb.ListDeploymentsResponse):
                allowed = [d for d in response.deployments if may_use(principal, d.name)]
                response = pb.ListDeploymentsResponse(deployments=allowed)
            return response

        return grpc.unary_unary_rpc_method_handler(unary_unary, **_kinds(handler))

    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await check(request, context)
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream, **_kinds(handler))

    inner_ss = handler.stream_stream or handler.stream_unary
    inspect = method.endswith("/Inspect")

    async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for request in requests:
            await check(request, context)
            yield request

    async def stream_stream(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        if inspect and not principal.inspect:
            await _deny(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "inspect_denied",
                on_failure,
                "this token may not call Inspect",
            )
        async for item in inner_ss(checked(requests, context), context):
            yield item

    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(stream_stream, **_kinds(handler))

    async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        return await inner_ss(checked(requests, context), context)

    return grpc.stream_unary_rpc_method_handler(stream_unary, **_kinds(handler))
