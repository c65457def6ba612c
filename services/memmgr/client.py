"""Worker side of memmgr: an async session client and the engine's LeasedBlockSource.

    client = MemmgrClient("127.0.0.1:50053", worker_id="worker-0")
    await client.open()                              # OpenSession + heartbeat task
    handle = await client.register_llm("llama", num_layers=2, num_kv_heads=2, head_dim=16,
                                       dtype="float32", rate=2.0)
    pool = segment.attach(handle)                    # [num_blocks, 2, block_size, head_dim], shared
    source = client.block_source("llama")            # types.BlockSource for the engine (sync)
    ...
    await client.close()                             # closes sources, CloseSession (blocks freed)

Every call carries the internal token (when given) and, once the session is open, its session key
(services/memmgr/auth.py). Errors come back as memmgr domain errors (services/memmgr/types.py, UnavailableError when memmgr is
unreachable). Heartbeats run every heartbeat_timeout/3 on the client's event loop; if memmgr says
the session expired, or does not know it (memmgr restarted), `expired` is set, every block source is
marked dead (its calls raise SessionExpiredError) and `on_lost` is called; while memmgr is
unreachable, heartbeats keep trying.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from muxserve.v1 import memmgr_pb2 as pb
from muxserve.v1 import memmgr_pb2_grpc as pb_grpc
from services.memmgr import convert
from services.memmgr.auth import call_metadata
from services.memmgr.block_source import LeasedBlockSource
from services.memmgr.errors import UnavailableError, domain_error
from services.memmgr.types import LLMSpec, MemmgrError, NotFoundError, PoolHandle, SessionExpiredError, Stats

__all__ = ["MemmgrClient", "LeasedBlockSource"]
log = logging.getLogger(__name__)


class MemmgrClient:
    def __init__(self, address: str, worker_id: str, rpc_timeout_s: float = 10.0, token: str | None = None):
        self.address, self.worker_id, self.rpc_timeout_s, self.token = address, worker_id, rpc_timeout_s, token
        self.session_id = ""
        self.session_key = ""
        self.heartbeat_timeout_s = 0.0
        self.expired: SessionExpiredError | None = None
        self.registered: dict[str, tuple[LLMSpec, PoolHandle, int]] = {}  # name -> (spec, handle, quota)
        self.waiting: dict[str, int] = {}  # per LLM, reported in heartbeats (ADBS demand)
        self.sources: list[LeasedBlockSource] = []
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.MemmgrStub | None = None
        self._heartbeat: asyncio.Task | None = None
        self.on_lost = None  # called (on the event loop) once the heartbeat finds the session gone

    async def open(self, heartbeats: bool = True) -> str:
        """Open the session (and start heartbeats); returns the session id."""
        self._channel = grpc.aio.insecure_channel(self.address)
        self._stub = pb_grpc.MemmgrStub(self._channel)
        resp = await self._call(self._stub.OpenSession, pb.OpenSessionRequest(worker_id=self.worker_id))
        self.session_id, self.heartbeat_timeout_s = resp.session_id, resp.heartbeat_timeout_s
        self.session_key = resp.session_key
        if heartbeats:
            self._heartbeat = asyncio.create_task(self._heartbeat_loop())
        return self.session_id

    async def __aenter__(self) -> "MemmgrClient":
        await self.open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def register_llm(self, name: str, num_layers: int, num_kv_heads: int, head_dim: int,
                           dtype: str, rate: float = 1.0) -> PoolHandle:
        """Register an LLM of this unit; returns the handle of its pool (segment.attach maps it)."""
        spec = LLMSpec(name, num_layers, num_kv_heads, head_dim, str(dtype).removeprefix("torch."), rate)
        resp = await self._call(self._stub.RegisterLLM, pb.RegisterLLMRequest(
            session_id=self.session_id, llm=convert.spec_to_proto(spec)))
        handle = convert.handle_from_proto(resp.pool)
        self.registered[name] = (spec, handle, resp.quota_blocks)
        return handle

    def block_source(self, llm: str, chunk_token_blocks: int = 8, low_token_blocks: int = 4,
                     high_token_blocks: int = 24) -> LeasedBlockSource:
        """A BlockSource for the engine; sizes are in token blocks (x layers x kv_heads head-wise)."""
        spec = self.registered[llm][0]
        bpt = spec.blocks_per_token_block
        src = LeasedBlockSource(self.address, self.session_id, llm, chunk_token_blocks * bpt,
                                low_token_blocks * bpt, high_token_blocks * bpt, self.rpc_timeout_s,
                                metadata=self.metadata)
        self.sources.append(src)
        return src

    async def lease(self, llm: str, n: int) -> list[int]:
        resp = await self._call(self._stub.Lease, pb.LeaseRequest(session_id=self.session_id, llm=llm, n=n))
        return list(resp.block_ids)

    async def release(self, llm: str, ids: list[int]) -> None:
        await self._call(self._stub.Release, pb.ReleaseRequest(session_id=self.session_id, llm=llm, block_ids=ids))

    async def heartbeat(self) -> None:
        await self._call(self._stub.Heartbeat, pb.HeartbeatRequest(session_id=self.session_id, waiting=self.waiting))

    async def stats(self) -> Stats:
        return convert.stats_from_proto(await self._call(self._stub.Stats, pb.StatsRequest()))

    async def set_quota(self, llm: str, quota_blocks: int) -> None:
        await self._call(self._stub.SetQuota, pb.SetQuotaRequest(llm=llm, quota_blocks=quota_blocks))

    async def adapt_quotas(self) -> list[tuple[str, int, int]]:
        resp = await self._call(self._stub.AdaptQuotas, pb.AdaptQuotasRequest())
        return [(c.llm, c.old_quota, c.new_quota) for c in resp.changes]

    async def check_integrity(self) -> tuple[bool, str]:
        resp = await self._call(self._stub.CheckIntegrity, pb.CheckIntegrityRequest())
        return resp.ok, resp.problem

    async def close(self) -> None:
        """Stop heartbeats, close block sources, end the session (memmgr frees its blocks)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        for src in self.sources:
            await asyncio.to_thread(src.close)
        self.sources.clear()
        if self._channel is None:
            return
        if self.session_id and self.expired is None:
            try:
                await self._call(self._stub.CloseSession, pb.SessionRef(session_id=self.session_id))
            except MemmgrError as e:
                log.warning("memmgr CloseSession failed: %s", e)
        await self._channel.close()
        self._channel = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return call_metadata(self.token, self.session_key)

    async def _call(self, method, request):
        if self._stub is None:
            raise UnavailableError("MemmgrClient is not open (call open() first)")
        try:
            return await method(request, timeout=self.rpc_timeout_s, metadata=self.metadata)
        except grpc.aio.AioRpcError as e:
            raise domain_error(e) from None

    async def _heartbeat_loop(self) -> None:
        interval = max(self.heartbeat_timeout_s / 3, 0.01)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.heartbeat()
            except (SessionExpiredError, NotFoundError) as e:
                if isinstance(e, NotFoundError):  # memmgr restarted: the session and its blocks are gone
                    e = SessionExpiredError(f"memmgr at {self.address} no longer knows session "
                                            f"{self.session_id} (it restarted): {e}")
                log.error("memmgr session %s lost: %s", self.session_id, e)
                self.expired = e
                for src in self.sources:
                    src.mark_dead(e)
                if self.on_lost is not None:
                    self.on_lost()
                return
            except MemmgrError as e:
                log.warning("memmgr heartbeat failed: %s", e)
