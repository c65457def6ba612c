"""Serving the HTTP API with uvicorn inside the router's own event loop (beside grpc.aio).

`HttpServer.start(app, host, port, max_body_bytes)` binds (port 0 picks a free one) and serves until
`stop()`; uvicorn's own signal handling is off (the router's SIGTERM handler stops both fronts). Bodies
over `max_body_bytes` are refused with 413 and an OpenAI error body, from the Content-Length header
when there is one, else as the body streams in, before the route reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket

import uvicorn

from services.router.openai_api.errors import error_body

log = logging.getLogger(__name__)

# An idle keep-alive connection is closed after this (uvicorn's default, 5 s, races clients that reuse a
# pooled connection just as the server closes it: they see a reset instead of a response).
KEEP_ALIVE_S = 60
DRAIN_BYTES = 256 << 20  # most of a refused chunked body read and dropped (see BodyLimit._drain)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # the router handles SIGTERM/SIGINT for both fronts
        yield


class BodyLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`. The body is read here (at most
    max_bytes of it are ever held) and handed to the app whole; later receive() calls (the client's
    disconnect) go to the server."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send, int(length))
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._drain(receive, message)  # before answering: the server ignores reads after
                return await self._refuse(send, size)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _drain(self, receive, message, cap: int = DRAIN_BYTES) -> None:
        """Read (and drop) the rest of a refused body, up to `cap` bytes, so that a client that sends
        all of it before reading gets the 413 instead of a reset connection."""
        seen = 0
        while message.get("more_body", False) and seen < cap:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))

    async def _refuse(self, send, size: int) -> None:
        body = json.dumps(error_body(
            f"request body too large: {size} bytes, at most {self.max_bytes} (router.max_message_bytes)",
            "invalid_request_error", None, "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class HttpServer:
    def __init__(self):
        self.server: _Server | None = None
        self.task: asyncio.Task | None = None
        self.port = 0

    async def start(self, app, host: str, port: int, max_body_bytes: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit it (Linux): without it Nagle holds each small SSE event until the
        # client's delayed ACK, and a kept-alive stream delivers its tokens in bursts.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.set_inheritable(True)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(BodyLimit(app, max_body_bytes), lifespan="off", access_log=False,
                                log_level="warning", timeout_graceful_shutdown=5, timeout_keep_alive=KEEP_ALIVE_S)
        self.server = _Server(config)
        self.task = asyncio.ensure_future(self.server.serve(sockets=[sock]))
        while not self.server.started:
            if self.task.done():
                self.task.result()  # raises why it could not start
                raise OSError(f"HTTP server on {host}:{self.port} stopped at start")
            await asyncio.sleep(0.01)
        log.info("OpenAI-compatible HTTP API on http://%s:%d/v1", host, self.port)

    async def stop(self) -> None:
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            await asyncio.gather(self.task, return_exceptions=True)
            self.server = self.task = None
