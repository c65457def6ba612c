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
- if the session is lost (memmgr expired it: the worker was silent past its heartbeat timeout; or
  memmgr no longer knows it: memmgr restarted), the blocks may already be someone else's: new
  requests get UNAVAILABLE (`recovering`) while every request in flight fails ("error": UNAVAILABLE
  at the servicer), a new session is opened (retrying up to connect_timeout_s), the LLMs are
  re-registered, and when memmgr now serves a new segment of the same layout (a restarted memmgr)
  the engine and its job processes move onto it (engine/remap.py); then each LLM gets a new source.
  While memmgr is unreachable, this is retried every sync round (requests keep getting UNAVAILABLE);
  if memmgr came back with another pool layout, every request fails fast until the worker is restarted;
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
from services.worker.engine.remap import rebind_pool
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
        self.recovering = False  # a lost session is being replaced: new requests get UNAVAILABLE
        self.new_handle: PoolHandle | None = None  # memmgr's pool after a restart, until re-mapped
        self.remaps = 0  # how many times the engine moved to a new memmgr pool
        self._lost = asyncio.Event()  # the heartbeat found the session gone: sync now
        self.client.on_lost = self._lost.set

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

    async def _register(self, llm: LLMConfig, config: EngineConfig, remap: bool = False) -> int:
        """Register llm with memmgr; map its pool the first time; returns its quota (head-wise blocks).
        remap: a pool other than the mapped one is expected (memmgr restarted): it is kept in
        self.new_handle for _remap instead of failing."""
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
        elif remap and handle != self.handle and handle.key == self.handle.key \
                and handle.block_size == self.handle.block_size and handle == (self.new_handle or handle):
            self.new_handle = handle
        elif handle != self.handle:
            raise InvalidRequestError(
                f"cannot load LLM {llm.name!r}: memmgr leases it from the pool {handle.key} "
                f"({handle.name}, block_size {handle.block_size}), but this worker runs over the pool "
                f"{self.handle.key} ({self.handle.name}, block_size {self.handle.block_size}); one worker "
                "serves LLMs of one head_dim and dtype")
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
            try:  # every sync_interval_s, or at once when the heartbeat finds the session gone
                await asyncio.wait_for(self._lost.wait(), self.leases.sync_interval_s)
            except asyncio.TimeoutError:
                pass
            self._lost.clear()
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
        """The session is gone (expired: this worker was silent past memmgr's heartbeat timeout; or
        unknown: memmgr restarted), so its blocks may be someone else's by now. Refuse new requests,
        fail every request, open a new session, re-register the LLMs; if memmgr now serves another
        segment (a restart), move the engine and its jobs onto it (engine/remap.py); then give each LLM
        a new source once its failed sequences have let go of their blocks."""
        eng, old = self.engine.engine, self.client
        self.recovering = True
        log.error("memmgr session %s lost (%s): failing in-flight requests, opening a new session",
                  old.session_id, old.expired)
        try:
            await asyncio.to_thread(eng.fail_all, "this worker lost its KV lease (memmgr session expired or "
                                                  "memmgr restarted); retry")
            self.client = MemmgrClient(self.address, old.worker_id, old.rpc_timeout_s, old.token)
            self.client.on_lost = self._lost.set
            self.sources.client = self.client
            await self._open()
            quotas = {name: await self._register(eng.llms[name].cfg, eng.config, remap=True) for name in list(eng.llms)}
            await _until(lambda: not any(v.used for v in eng.blocks.llms.values()) and not eng._inflight, 60)
            if self.new_handle is not None:
                await self._remap(eng)
            for name, quota in quotas.items():
                await asyncio.to_thread(self._swap, eng, name, quota)
            log.info("memmgr session %s replaces the lost one", self.client.session_id)
        except UnavailableError as e:  # memmgr is not back yet: the next sync round tries again
            log.warning("memmgr: not reachable yet (%s); still refusing requests, retrying", e)
            self.client.expired = old.expired
            return
        except Exception as e:  # e.g. memmgr restarted with another pool layout: this engine cannot follow
            log.critical("memmgr: could not recover the session (%s); restart this worker", e)
            self.broken = f"this worker lost its KV pool ({e}); it must be restarted"
        finally:
            old.sources.clear()  # dead, closed by sources.open
            await old.close()
        self.recovering = False

    async def _remap(self, eng) -> None:
        """Map memmgr's new segment, move the engine's jobs onto it, drop the old mapping."""
        old, new = self.handle, self.new_handle
        log.warning("memmgr serves a new pool %s (%d blocks; was %s): re-mapping", new.name, new.num_blocks, old.name)
        self.handle, self.pool, self.new_handle = new, segment.attach(new), None
        await asyncio.to_thread(rebind_pool, eng, self.pool, functools.partial(segment.attach, new),
                                functools.partial(segment.detach, old))
        segment.detach(old)
        self.remaps += 1

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
