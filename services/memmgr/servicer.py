"""The Memmgr gRPC servicer: thin; converts, calls MemoryManager, converts back.

Domain errors become status codes in one place (`_abort`, table in errors.py): InvalidArgumentError ->
INVALID_ARGUMENT, NotFoundError -> NOT_FOUND, SessionExpiredError -> FAILED_PRECONDITION,
ConflictError -> ALREADY_EXISTS, ExhaustedError -> RESOURCE_EXHAUSTED, and the auth errors (auth.py: who may
call) UNAUTHENTICATED / PERMISSION_DENIED. Calls are synchronous and short (no awaits inside the manager), so
they run on the event loop without blocking it noticeably.
"""

from __future__ import annotations

import logging

import grpc

from muxserve.v1 import memmgr_pb2 as pb
from muxserve.v1 import memmgr_pb2_grpc as pb_grpc
from services.memmgr import convert
from services.memmgr.auth import InternalAuth
from services.memmgr.manager import MemoryManager
from services.memmgr.errors import status_of
from services.memmgr.types import MemmgrError

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Memmgr"].full_name


async def _abort(context: grpc.aio.ServicerContext, err: MemmgrError) -> None:
    await context.abort(status_of(err), str(err))


def _guarded(token: bool = True, session: bool = False):
    """Run a servicer method after its auth checks (the token; the named session's key), turning domain
    errors into their status codes."""
    def wrap(method):
        async def wrapper(self, request, context):
            try:
                metadata = context.invocation_metadata()
                if token:
                    self.auth.check_token(metadata)
                if session:  # a session this memmgr does not know is NOT_FOUND before its key is checked: a
                    self.m.check_known(request.session_id)  # worker tells a memmgr restart from it
                    self.auth.check_session(metadata, request.session_id)
                return method(self, request)
            except MemmgrError as e:
                await _abort(context, e)
        wrapper.__name__ = method.__name__
        return wrapper
    return wrap


class MemmgrServicer(pb_grpc.MemmgrServicer):
    def __init__(self, manager: MemoryManager, auth: InternalAuth):
        self.m, self.auth = manager, auth

    @_guarded()
    def OpenSession(self, req: pb.OpenSessionRequest) -> pb.OpenSessionResponse:
        sid = self.m.open_session(req.worker_id)
        log.info("session %s opened by worker %s", sid, req.worker_id)
        return pb.OpenSessionResponse(session_id=sid, heartbeat_timeout_s=self.m.heartbeat_timeout_s,
                                      unit_id=self.m.unit_id, session_key=self.auth.session_key(sid))

    @_guarded(session=True)
    def CloseSession(self, req: pb.SessionRef) -> pb.CloseSessionResponse:
        return pb.CloseSessionResponse(released_blocks=self.m.close_session(req.session_id))

    @_guarded(session=True)
    def RegisterLLM(self, req: pb.RegisterLLMRequest) -> pb.RegisterLLMResponse:
        spec = convert.spec_from_proto(req.llm)
        handle, quota = self.m.register(req.session_id, spec)
        return pb.RegisterLLMResponse(pool=convert.handle_to_proto(handle), quota_blocks=quota,
                                      blocks_per_token_block=spec.blocks_per_token_block)

    @_guarded(session=True)
    def Lease(self, req: pb.LeaseRequest) -> pb.LeaseResponse:
        return pb.LeaseResponse(block_ids=self.m.lease(req.session_id, req.llm, req.n))

    @_guarded(session=True)
    def Release(self, req: pb.ReleaseRequest) -> pb.ReleaseResponse:
        self.m.release(req.session_id, req.llm, list(req.block_ids))
        return pb.ReleaseResponse()

    @_guarded(session=True)
    def Heartbeat(self, req: pb.HeartbeatRequest) -> pb.HeartbeatResponse:
        self.m.heartbeat(req.session_id, dict(req.waiting))
        return pb.HeartbeatResponse()

    @_guarded(token=False)  # read-only
    def Stats(self, req: pb.StatsRequest) -> pb.StatsResponse:
        return convert.stats_to_proto(self.m.stats())

    @_guarded()
    def SetQuota(self, req: pb.SetQuotaRequest) -> pb.SetQuotaResponse:
        self.m.set_quota(req.llm, req.quota_blocks)
        return pb.SetQuotaResponse()

    @_guarded()
    def AdaptQuotas(self, req: pb.AdaptQuotasRequest) -> pb.AdaptQuotasResponse:
        return pb.AdaptQuotasResponse(changes=[pb.QuotaChange(llm=n, old_quota=a, new_quota=b)
                                               for n, a, b in self.m.adapt()])

    @_guarded(token=False)  # read-only
    def CheckIntegrity(self, req: pb.CheckIntegrityRequest) -> pb.CheckIntegrityResponse:
        try:
            self.m.check()
        except AssertionError as e:
            log.error("integrity check failed: %s", e)
            return pb.CheckIntegrityResponse(ok=False, problem=str(e) or "assertion failed")
        return pb.CheckIntegrityResponse(ok=True)


def register(server: grpc.aio.Server, manager: MemoryManager, auth: InternalAuth) -> list[str]:
    pb_grpc.add_MemmgrServicer_to_server(MemmgrServicer(manager, auth), server)
    return [SERVICE_NAME]
