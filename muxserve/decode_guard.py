"""A server interceptor that answers undecodable request messages with INVALID_ARGUMENT.

grpc.aio answers a request whose bytes do not parse as the method's message with UNKNOWN ("Unexpected
DecodeError") and logs a traceback per call. Every muxserve server (muxserve/serving.start_server)
installs `DecodeGuard`: for methods with a single request message (all of muxserve's), the request
deserializer is wrapped so a parse failure becomes a marker, and the handler answers the marker with
INVALID_ARGUMENT naming the message type, without calling the servicer. Client-streaming methods pass
through unchanged.
"""

from __future__ import annotations

import inspect

import grpc


class _Undecodable:
    def __init__(self, error: Exception):
        self.error = error


def _safe(deserialize):
    def parse(raw: bytes):
        try:
            return deserialize(raw)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the client's bad input
            return _Undecodable(exc)
    return parse


async def _refuse(bad: _Undecodable, context) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"the request message could not be decoded: {bad.error}"[:500])


def _wrap_unary(inner):
    async def behavior(request, context):
        if isinstance(request, _Undecodable):
            await _refuse(request, context)
        return await inner(request, context)
    return behavior


def _wrap_stream(inner):
    if inspect.isasyncgenfunction(inner):
        async def gen(request, context):
            if isinstance(request, _Undecodable):
                await _refuse(request, context)
            async for item in inner(request, context):
                yield item
        return gen
    return _wrap_unary(inner)  # a coroutine that writes with context.write


class DecodeGuard(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        deserialize = _safe(handler.request_deserializer)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(_wrap_stream(handler.unary_stream), deserialize,
                                                        handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(_wrap_unary(handler.unary_unary), deserialize,
                                                   handler.response_serializer)
