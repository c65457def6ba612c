"""Where the worker's KV blocks come from: a local pool, or leases from the unit's memmgr.

`make_backend(mesh, wcfg)` -> LocalKV or MemmgrKV (worker.kv: memmgr | local | auto, documented in
services/worker/config.py). Both offer what services/worker/server.Worker needs:

    engine = await kv.create_engine(llms, engine_config)   # AsyncUnitEngine hosting llms
    await kv.add_llm(engine, llm)                          # one more LLM
    await kv.close()                                       # after engine.close()

MemmgrKV contract:
- one memmgr session per worker (opened at the first load; heartbeats on the event loop);
- each LLM is registered (layers, KV heads, head_dim, dtype, rate) BEFORE the engine loads it; memmgr
  answers with its pool's handle, which the worker maps without a copy (segment.attach), and its
  quota, which becomes the engine's quota for that LLM;
- one worker runs over one pool: an LLM whose head_dim/dtype has no pool in memmgr, or whose pool is
  not the one the worker already runs over, fails with InvalidRequestError naming both;
- the engine leases through one KVBlockSource per LLM (services/worker/leases.py); removing an LLM
  from the engine closes its source (its cached blocks go back);
- every sync_interval_s: quotas are read from memmgr's Stats (its ADBS adaptation) and applied with
  engine.set_quotas; the LLMs' waiting counts go out with the heartbeats; each source's low mark
  follows demand (2 x running sequences / block_size token blocks: what a few decode rounds take);
  an LLM with no sequence that has held no block for idle_release_s parks its source (cached blocks
  go back);
- if memmgr expires the session (the worker was silent past its heartbeat timeout), the blocks may
  already be someone else's: every request fails ("error"), a new session is opened, the LLMs are
  re-registered and get new sources; if that fails (memmgr restarted with another pool), every
  request fails fast until the worker is restarted;
- close() ends the session: memmgr frees whatever the session still holds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os

from muxserve import config as mesh_config
from services.memmgr import segment
from services.memmgr.client import MemmgrClient
from services.memmgr.errors import UnavailableError
from services.memmgr.types import MemmgrError, PoolHandle
from services.worker.config import LeaseConfig, WorkerConfig
from services.worker.engine import loader
from services.worker.engine.async_engine import AsyncUnitEngine
from services.worker.engine.config import EngineConfig, LLMConfig
from services.worker.engine.types import InvalidRequestError
from services.worker.leases import MemmgrSources

log = logging.getLogger(__name__)


def kv_mode(mesh: mesh_config.MeshConfig, wcfg: WorkerConfig) -> str:
    """memmgr or local: worker.kv, where `auto` means memmgr iff a memmgr address is configured."""
    if wcfg.kv != "auto":
        return wcfg.kv
    env = any(f"MUXSERVE_MEMMGR_{k}" in os.environ for k in ("ADDRESS", "HOST", "PORT"))
    return "memmgr" if env or mesh.raw.get("memmgr") else "local"


def make_backend(mesh: mesh_config.MeshConfig, wcfg: WorkerConfig) -> "LocalKV | MemmgrKV":
    if kv_mode(mesh, wcfg) == "memmgr":
        return MemmgrKV(mesh.address("memmgr"), wcfg.worker_id, wcfg.leases, mesh.internal_token)
    return LocalKV()


class LocalKV:
    """The engine's own pool (EngineConfig.num_blocks / pool_bytes), shared by all its LLMs."""

    mode = "local"

    async def create_engine(self, llms: list[LLMConfig], config: EngineConfig) -> AsyncUnitEngine:
        return await AsyncUnitEngine.create(llms, config)

    async def add_llm(self, engine: AsyncUnitEngine, llm: LLMConfig) -> None:
        await engine.add_llm(llm)

    async def close(self) -> None:
        pass


class MemmgrKV:
    """Blocks leased from memmgr at `address`, per LLM, in the session of `worker_id`."""

    mode = "memmgr"

    def __init__(self, address: str, worker_id: str, leases: LeaseConfig | None = None, token: str | None = None):
        self.address, self.leases = address, leases or LeaseConfig()
        self.client = MemmgrClient(address, worker_id, token=token)  # token: memmgr's internal token
        self.sources = MemmgrSources(self.client, self.leases)
        self.quota_moves: dict[str, int] = {}  # LLM -> quota changes applied from memmgr
        self.handle: PoolHandle | None = None
        self.pool = None  # [num_blocks, 2, block_size, head_dim], memmgr's memory
        self.engine: AsyncUnitEngine | None = None
        self._task: asyncio.Task | None = None
        self._idle_since: dict[str, float] = {}
        self.broken = ""  # set when an expired session could not be replaced

    # ---- loading ----------------------------------------------------------------------------
    async def create_engine(self, llms: list[LLMConfig], config: EngineConfig) -> AsyncUnitEngine:
        """Open the session, register llms, map the pool, build the engine over it and load llms."""
        await self._open()
        quotas = {c.name: await self._register(c, config) for c in llms}
        config = self._bind(config)
        self.engine = await AsyncUnitEngine.create(
            [], config, block_source=self.sources, pool=self.pool,
            pool_attach=functools.partial(segment.attach, self.handle))
        try:
            for c in llms:
                await self.engine.add_llm(c, quotas[c.name])
        except BaseException:
            await self.engine.close()  # the jobs of the LLMs loaded so far
            self.engine = None
            raise
        self._task = asyncio.ensure_future(self._sync_loop())
        return self.engine

    async def add_llm(self, engine: AsyncUnitEngine, llm: LLMConfig) -> None:
        await engine.add_llm(llm, await self._register(llm, engine.engine.config))

    async def _open(self) -> None:
        """OpenSession, retrying while memmgr is not up yet (connect_timeout_s)."""
        if self.client.session_id:
            return
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + self.leases.connect_timeout_s, 0.1
        while True:
            try:
                await self.client.open()
                log.info("memmgr session %s at %s", self.client.session_id, self.address)
                return
            except UnavailableError as e:
                await self.client.close()
                if loop.time() + delay > deadline:
                    raise UnavailableError(f"memmgr at {self.address} is not reachable: {e}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _register(self, llm: LLMConfig, config: EngineConfig) -> int:
        """Register llm with memmgr; map its pool the first time; returns its quota (head-wise blocks)."""
        spec = await asyncio.to_thread(loader.read_spec, llm.path, config.torch_dtype)
        try:
            handle = await self.client.register_llm(llm.name, spec.num_layers, spec.num_kv_heads,
                                                    spec.head_dim, config.dtype, llm.rate)
        except MemmgrError as e:
            raise InvalidRequestError(f"cannot load LLM {llm.name!r} (head_dim {spec.head_dim}, {config.dtype}): "
                                      f"memmgr at {self.address}: {e}") from None
        if self.handle is None:
            self.handle, self.pool = handle, segment.attach(handle)
            log.info("mapped memmgr pool %s: %d blocks of %d tokens (%s)", handle.name, handle.num_blocks,
                     handle.block_size, handle.key)
        elif handle != self.handle:
            raise InvalidRequestError(
                f"cannot load LLM {llm.name!r}: memmgr leases it from the pool {handle.key}, but this worker "
                f"runs over the pool {self.handle.key}; one worker serves LLMs of one head_dim and dtype")
        return self.client.registered[llm.name][2]

    def _bind(self, config: EngineConfig) -> EngineConfig:
        """The engine config over memmgr's pool: its block_size wins (the pool layout is memmgr's)."""
        if config.block_size != self.handle.block_size:
            log.warning("engine.block_size %d replaced by memmgr's pool block_size %d",
                        config.block_size, self.handle.block_size)
        return dataclasses.replace(config, block_size=self.handle.block_size)

    # ---- the background sync ----------------------------------------------------------------
    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.leases.sync_interval_s)
            try:
                await self.sync()
            except MemmgrError as e:
                log.warning("memmgr sync failed: %s", e)
            except Exception:
                log.exception("memmgr sync")

    async def sync(self) -> None:
        """One round: report waiting counts, apply memmgr's quotas, park idle LLMs' sources."""
        if self.broken:
            await asyncio.to_thread(self.engine.engine.fail_all, self.broken)  # fail fast, never hang
            return
        if self.client.expired is not None:
            await self._recover()
            return
        eng = self.engine.engine
        llms = (await asyncio.to_thread(eng.stats))["llms"]  # off the loop: a step may hold the engine lock
        self.client.waiting = {n: s["waiting"] for n, s in llms.items()}
        stats = await self.client.stats()
        changed = {u.name: u.quota_blocks for u in stats.llms
                   if u.name in llms and llms[u.name]["quota"] != u.quota_blocks}
        if changed:
            log.info("memmgr quotas: %s", changed)
            for name in changed:  # ADBS moves seen here (services/worker/metrics.py)
                self.quota_moves[name] = self.quota_moves.get(name, 0) + 1
            try:
                await asyncio.to_thread(eng.set_quotas, changed)
            except KeyError:
                pass  # an LLM was removed meanwhile; the next round has fresh stats
        for name, s in llms.items():
            src = self.sources.get(name)
            if src is not None:
                src.set_low(-(-2 * s["running"] // eng.config.block_size) * src.token_block)
        await self._park_idle(llms)

    async def _recover(self) -> None:
        """The session expired (this worker was silent past memmgr's heartbeat timeout), so its blocks
        may be someone else's by now: fail every request, open a new session, re-register the LLMs
        and give each a new source once its failed sequences have let go of their blocks."""
        eng, old = self.engine.engine, self.client
        log.error("memmgr session %s expired: failing in-flight requests, opening a new session", old.session_id)
        await asyncio.to_thread(eng.fail_all, "this worker's KV lease expired (memmgr session timed out); retry")
        try:
            self.client = MemmgrClient(self.address, old.worker_id, old.rpc_timeout_s, old.token)
            self.sources.client = self.client
            await self._open()
            for name in list(eng.llms):
                quota = await self._register(eng.llms[name].cfg, eng.config)
                await _until(lambda: eng.blocks[name].used == 0, 60)
                await asyncio.to_thread(self._swap, eng, name, quota)
        except Exception as e:  # e.g. memmgr restarted with another pool: this engine cannot follow
            log.critical("memmgr: could not recover the session (%s); restart this worker", e)
            self.broken = f"this worker lost its KV pool ({e}); it must be restarted"
        finally:
            old.sources.clear()  # dead, closed by sources.open
            await old.close()
        log.info("memmgr session %s replaces the expired one", self.client.session_id)

    def _swap(self, eng, name: str, quota: int) -> None:
        eng.blocks.replace_source(name, self.sources.open(name))  # it holds no block: no lock needed
        eng.set_quotas({name: quota})

    async def _park_idle(self, llms: dict[str, dict]) -> None:
        now = asyncio.get_running_loop().time()
        for name, s in llms.items():
            src = self.sources.get(name)
            if src is None or s["running"] or s["waiting"] or s["used_blocks"] or src.num_held:
                self._idle_since.pop(name, None)
                continue
            since = self._idle_since.setdefault(name, now)
            if now - since >= self.leases.idle_release_s and src.num_free:
                n = await asyncio.to_thread(src.park)
                log.debug("%s idle: %d cached blocks back to memmgr", name, n)

    async def close(self) -> None:
        """Stop syncing and end the session (cached and held blocks all go back)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.close()


async def _until(pred, timeout: float) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > end:
            raise TimeoutError("sequences still hold blocks of the expired session")
        await asyncio.sleep(0.01)
