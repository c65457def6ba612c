"""What both public fronts (gRPC servicer.py and the HTTP API in services/router/http/) do with a request.

Contract of `RouterCore`:
- `admit(req)` validates (validation.py), assigns a request id when it has none and records the
  arrival in Redis (never waiting on it); it raises RouterError subclasses (one status code each).
- `stream(req)` forwards an admitted request (forward.py) and yields the worker's `GenerateResponse`
  chunks unchanged; it refuses a request past `max_streams` in flight (all fronts together) with
  ResourceExhausted; it updates the metrics (metrics.py) as chunks arrive and when the request ends, and
  records the output tokens in Redis. Closing it early (the client went away) cancels the worker call.
A request that fails raises RouterError (with the worker's code and message when the worker failed it).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import AsyncIterator

from muxserve.popularity import PopularityRecorder
from muxserve.v1 import router_pb2
from services.router.config import ModelLimits, RequestBounds
from services.router.forward import Forwarder
from services.router.metrics import RouterMetrics
from services.router.request import ResourceExhausted, RouteRequest, RouterError
from services.router.routing import RoutingTable
from services.router.validation import validate

log = logging.getLogger(__name__)


class RouterCore:
    def __init__(self, models: dict[str, ModelLimits], table: RoutingTable, forwarder: Forwarder,
                 recorder: PopularityRecorder | None = None, bounds: RequestBounds = RequestBounds(),
                 max_streams: int = 1024, metrics: RouterMetrics | None = None):
        self.models, self.table, self.forwarder, self.recorder = models, table, forwarder, recorder
        self.bounds, self.max_streams = bounds, max_streams
        self.metrics = metrics or RouterMetrics()
        self.in_flight = 0

    def admit(self, req: RouteRequest) -> RouteRequest:
        validate(req, self.models, self.bounds)
        req.request_id = req.request_id or uuid.uuid4().hex
        if self.recorder is not None:
            self.recorder.record(req.model, req.known_prompt_len)
        return req

    async def stream(self, req: RouteRequest) -> AsyncIterator[router_pb2.GenerateResponse]:
        if self.in_flight >= self.max_streams:
            self.metrics.failure.labels(req.model, "RESOURCE_EXHAUSTED").inc()
            raise ResourceExhausted(f"the router has {self.in_flight} requests in flight "
                                    f"(router.max_concurrent_streams {self.max_streams}); retry later")
        self.in_flight += 1
        gauge = self.metrics.in_flight.labels(req.model)
        gauge.inc()
        stream = self.forwarder.stream(req)
        try:
            last = 0.0
            async for resp in stream:
                now = time.monotonic()
                if resp.token_ids:
                    self.metrics.tokens(req.model, len(resp.token_ids), now - last if last else None)
                last = now if resp.token_ids else last
                if resp.finish_reason:
                    u = resp.usage
                    self.metrics.finished(req.model, resp.finish_reason, u.prompt_tokens, u.completion_tokens,
                                          u.queue_time_s, u.time_to_first_token_s, u.e2e_latency_s)
                yield resp
        except RouterError as exc:
            self.metrics.failure.labels(req.model, exc.code.name).inc()
            raise
        finally:
            await stream.aclose()  # on client cancel: cancels the worker call
            self.in_flight -= 1
            gauge.dec()
            self.finish(req)

    def finish(self, req: RouteRequest) -> None:
        """Add what is known only at the end: output tokens (and a text prompt's token count)."""
        if self.recorder is not None:
            text_prompt_tokens = 0 if req.known_prompt_len else req.prompt_tokens
            self.recorder.record_output(req.model, req.completion_tokens, text_prompt_tokens)
        log.debug("request %s model %s worker %s: %d+%d tokens, %s", req.request_id, req.model,
                  req.worker or "-", req.prompt_tokens, req.completion_tokens, req.finish_reason or "no finish")
