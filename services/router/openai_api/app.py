"""The OpenAI-compatible HTTP API of the router (FastAPI), over the same RouterCore as the gRPC API.

Routes: POST /v1/completions, POST /v1/chat/completions (whole, or SSE chunks ending in `data: [DONE]`),
GET /v1/models, GET /health (200 while the router serves, 503 while it drains), GET /metrics (Prometheus text). /v1/* needs
`Authorization: Bearer <key>` when API keys are configured (auth.py). Errors are OpenAI error bodies
with the status mapped from the gRPC code (errors.py); a request that fails before its first token gets
that status, one that fails after the stream started gets an error event and then `[DONE]`.
"""

from __future__ import annotations

import time
import uuid
from typing import Callable

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from services.router.auth import ApiKeys
from services.router.core import RouterCore
from services.router.metrics import CONTENT_TYPE
from services.router.openai_api import errors, render
from services.router.openai_api.protocol import ChatCompletionRequest, CompletionRequest
from services.router.openai_api.runs import Choice, start
from services.router.request import RouterError, Unauthenticated


def build_app(core: RouterCore, keys: ApiKeys, serving: Callable[[], bool] = lambda: True) -> FastAPI:
    """The HTTP front over `core`; /health answers 503 while `serving()` is false (starting or draining)."""
    app = FastAPI(title="muxserve", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(RouterError, errors.router_error_handler)
    app.add_exception_handler(RequestValidationError, errors.validation_error_handler)

    def authorized(request: Request) -> None:
        if not keys.allows(request.headers.get("authorization")):
            raise Unauthenticated("missing or invalid API key: send `Authorization: Bearer <key>`")

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if serving() else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(core.metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models() -> dict:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "muxserve", "root": name,
             "max_model_len": lim.max_model_len or None} for name, lim in core.models.items()]}

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(body: CompletionRequest):
        groups = body.route_requests(uuid.uuid4().hex)
        return await respond(core, body, groups, "cmpl", completion_stream, render.completion)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(body: ChatCompletionRequest):
        lim = core.models.get(body.model)
        groups = body.route_requests(uuid.uuid4().hex, lim.max_model_len if lim else 0)
        return await respond(core, body, groups, "chatcmpl", chat_stream, render.chat)

    return app


async def respond(core: RouterCore, body, groups, prefix: str, streamer: Callable, whole: Callable):
    reqs = [r for g in groups for r in g]
    run = start(core, reqs)
    rid, created = f"{prefix}-{reqs[0].request_id.split('-')[0]}", int(time.time())
    if not body.stream:
        return JSONResponse(whole(rid, created, body.model, await run.collect(), body.n))
    events = run.events()
    try:
        first = await anext(events)  # a failure before the first token is an HTTP status, not an event
    except BaseException:
        await events.aclose()
        raise
    return StreamingResponse(streamer(events, first, rid, created, body, len(reqs)),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _pieces(events, first):
    yield first
    async for item in events:
        yield item


async def completion_stream(events, first, rid, created, body, count):
    choices = [Choice() for _ in range(count)]
    try:
        async for i, p in _pieces(events, first):
            choices[i].add(p)
            if p.text or p.finish_reason:
                yield render.sse(render.completion_chunk(rid, created, body.model, i, p))
        if body.include_usage:
            yield render.sse(render.usage_chunk(rid, created, body.model, "text_completion", choices, body.n))
    except RouterError as exc:
        yield render.sse(errors.from_router_error(exc)[1])
    finally:
        await events.aclose()
    yield render.DONE


async def chat_stream(events, first, rid, created, body, count):
    choices = [Choice() for _ in range(count)]
    started: set[int] = set()
    try:
        async for i, p in _pieces(events, first):
            choices[i].add(p)
            if i not in started:
                started.add(i)
                yield render.sse(render.chat_chunk(rid, created, body.model, i, {"role": "assistant", "content": ""}))
            if p.text or p.finish_reason:
                delta = {"content": p.text} if p.text else {}
                yield render.sse(render.chat_chunk(rid, created, body.model, i, delta, p.finish_reason))
        if body.include_usage:
            yield render.sse(render.usage_chunk(rid, created, body.model, "chat.completion.chunk", choices, body.n))
    except RouterError as exc:
        yield render.sse(errors.from_router_error(exc)[1])
    finally:
        await events.aclose()
    yield render.DONE
