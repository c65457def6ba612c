"""muxserve.v1.Router servicer: convert, hand to RouterCore (core.py), convert back; errors -> status codes.

Generate: the request is admitted (validated, given a request id, recorded) and streamed from the
least-loaded worker hosting its model; the worker's chunks stream back unchanged. Every RouterError
becomes its gRPC status code here, before or after the first chunk (a failed request never ends with
OK). ListModels: the configured models, their context length and the units hosting each now.
"""

from __future__ import annotations

import logging

from muxserve.v1 import router_pb2_grpc
from services.router import convert
from services.router.core import RouterCore
from services.router.request import RouterError

log = logging.getLogger(__name__)


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, core: RouterCore):
        self.core = core
        self.table = core.table

    async def Generate(self, request, context):
        try:
            req = self.core.admit(convert.request_from_proto(request))
        except RouterError as exc:
            await context.abort(exc.code, str(exc))
        stream = self.core.stream(req)
        try:
            async for resp in stream:
                yield resp
        except RouterError as exc:
            await context.abort(exc.code, str(exc))
        finally:
            await stream.aclose()

    async def ListModels(self, request, context):
        models = self.core.models
        return convert.models_to_proto(models, {m: self.table.units(m) for m in models})
