"""muxserve.v1.Router servicer: convert, validate, record popularity, forward; errors -> status codes.

Generate: the request is validated (validation.py), gets a request_id when it has none, is recorded
as an arrival of its model (never waiting on Redis), and is forwarded to the least-loaded worker
hosting the model; the worker's chunks stream back unchanged. Every RouterError becomes its gRPC
status code here and nowhere else. ListModels: the configured models, their context length and the
units hosting each now.
"""

from __future__ import annotations

import logging
import uuid

from muxserve.popularity import PopularityRecorder
from muxserve.v1 import router_pb2_grpc
from services.router import convert
from services.router.config import ModelLimits
from services.router.forward import Forwarder
from services.router.request import RouteRequest, RouterError
from services.router.routing import RoutingTable
from services.router.validation import validate

log = logging.getLogger(__name__)


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, models: dict[str, ModelLimits], table: RoutingTable, forwarder: Forwarder,
                 recorder: PopularityRecorder | None = None):
        self.models = models
        self.table = table
        self.forwarder = forwarder
        self.recorder = recorder

    async def Generate(self, request, context):
        try:
            req = self.admit(convert.request_from_proto(request))
        except RouterError as exc:
            await context.abort(exc.code, str(exc))
        stream = self.forwarder.stream(req)
        try:
            async for resp in stream:
                yield resp
        except RouterError as exc:
            await context.abort(exc.code, str(exc))
        finally:
            await stream.aclose()  # on client cancel: cancels the worker call
            self.finish(req)

    async def ListModels(self, request, context):
        return convert.models_to_proto(self.models, {m: self.table.units(m) for m in self.models})

    def admit(self, req: RouteRequest) -> RouteRequest:
        validate(req, self.models)
        req.request_id = req.request_id or uuid.uuid4().hex
        if self.recorder is not None:
            self.recorder.record(req.model, req.known_prompt_len)
        return req

    def finish(self, req: RouteRequest) -> None:
        """Add what is known only at the end: output tokens (and a text prompt's token count)."""
        if self.recorder is not None:
            text_prompt_tokens = 0 if req.known_prompt_len else req.prompt_tokens
            self.recorder.record_output(req.model, req.completion_tokens, text_prompt_tokens)
        log.debug("request %s model %s worker %s: %d+%d tokens, %s", req.request_id, req.model,
                  req.worker or "-", req.prompt_tokens, req.completion_tokens, req.finish_reason or "no finish")
