"""muxserve.v1.Worker servicer: thin conversion around the unit's AsyncUnitEngine.

Contract: Generate streams the engine's chunks for one request; engine errors map to one gRPC status
code each (below), whether raised before the first chunk or carried by the engine's final "error"
chunk (its tokens are sent first, then the stream ends with the status: finish_reason on the wire is
only stop, length or abort); a client that cancels the stream cancels the engine iterator, which
aborts the sequence and frees its KV blocks.
"""

from __future__ import annotations

import logging
import uuid

import grpc

from muxserve.v1 import worker_pb2_grpc
from services.worker import convert
from services.worker.engine import types

log = logging.getLogger(__name__)

STATUS = {
    types.InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    types.UnknownModelError: grpc.StatusCode.NOT_FOUND,
    types.ModelNotReadyError: grpc.StatusCode.UNAVAILABLE,
    types.ModelLoadError: grpc.StatusCode.FAILED_PRECONDITION,
    types.CapacityError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    types.JobCrashedError: grpc.StatusCode.UNAVAILABLE,
    types.PoolLostError: grpc.StatusCode.UNAVAILABLE,
}


def status_for(exc) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return grpc.StatusCode.INTERNAL


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    def __init__(self, worker, worker_id: str):
        self.worker = worker  # services.worker.server.Worker
        self.worker_id = worker_id
        self.unit_id = ""
        self.placement_version = 0

    async def Generate(self, request, context):
        request_id = request.request_id or uuid.uuid4().hex
        stream = self.worker.generate(request_id, request.model, convert.prompt_from_proto(request),
                                      list(request.prompt_token_ids) or None,
                                      convert.sampling_from_proto(request.sampling),
                                      request.add_special_tokens if request.HasField("add_special_tokens") else None)
        failure = None
        try:
            async for chunk in stream:
                if chunk.finish_reason == "error":
                    failure = chunk.error or types.EngineError("the request failed in the engine")
                    if chunk.token_ids:
                        yield convert.chunk_to_proto(request_id, chunk, final=False)
                    break
                yield convert.chunk_to_proto(request_id, chunk)
        except types.EngineError as exc:
            failure = exc
        finally:
            await stream.aclose()
        if failure is not None:
            log.info("request %s failed: %s", request_id, failure)
            await context.abort(status_for(failure), str(failure))

    async def GetStatus(self, request, context):
        return convert.status_to_proto(self.worker_id, self.unit_id, self.placement_version,
                                       self.worker.llm_stats(), self.worker.failed)
