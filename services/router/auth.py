"""API keys of the public fronts: `Authorization: Bearer <key>` on HTTP, the same `authorization`
metadata on gRPC.

`ApiKeys(keys)` with no keys is open (and the router logs so once, at start). With keys, a call to
muxserve.v1.Router (gRPC) or to /v1/* (HTTP) without one of them is refused: UNAUTHENTICATED / 401.
Health checks (grpc.health.v1, GET /health), reflection and /metrics stay open, so that orchestrators
and scrapers need no key. Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
import logging

import grpc

log = logging.getLogger(__name__)

PROTECTED_GRPC_PREFIX = "/muxserve.v1.Router/"


class ApiKeys:
    def __init__(self, keys: tuple[str, ...] | list[str] = ()):
        self.keys = tuple(k.encode() for k in keys)

    @property
    def open(self) -> bool:
        return not self.keys

    def log_mode(self) -> None:
        if self.open:
            log.warning("no API keys configured (router.api_keys, MUXSERVE_API_KEY): the public API is open")
        else:
            log.info("API keys required on gRPC and HTTP (%d configured)", len(self.keys))

    def allows(self, authorization: str | None) -> bool:
        """True when open, or when `authorization` is `Bearer <one of the keys>`."""
        if self.open:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        given = token.strip().encode()
        return any(hmac.compare_digest(given, k) for k in self.keys)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses muxserve.v1.Router calls without a valid key with UNAUTHENTICATED."""

    def __init__(self, keys: ApiKeys):
        self.keys = keys

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or self.keys.open or not details.method.startswith(PROTECTED_GRPC_PREFIX):
            return handler
        metadata = dict(details.invocation_metadata or ())
        if self.keys.allows(metadata.get("authorization")):
            return handler
        return _refusal(handler)


_MESSAGE = "missing or invalid API key: send metadata `authorization: Bearer <key>`"


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED."""
    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)

    async def stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)
        yield  # an async generator, like the method it stands for

    des, ser = handler.request_deserializer, handler.response_serializer
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream, des, ser)
    return grpc.unary_unary_rpc_method_handler(unary, des, ser)
