"""Boot the memmgr service: create the unit's pools, serve Memmgr + health, run the timers.

`start(cfg, mesh, device, port)` -> MemmgrService (tests use it with port 0); `serve(mesh, port, host)`
runs until SIGINT/SIGTERM; `main(config_path)` backs `muxserve memmgr --config FILE`.
Timers: session expiry (every heartbeat_timeout/4, at most 1 s), ADBS quota adaptation
(quota.adapt_interval_s) and the integrity check (integrity_interval_s). At shutdown the shared
memory segments are unlinked.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import torch

from muxserve import config as mesh_config
from muxserve.serving import RunningServer, install_uvloop, serve_until_signal, start_server
from services.memmgr import segment, servicer
from services.memmgr.auth import InternalAuth
from services.memmgr.config import MemmgrConfig
from services.memmgr.manager import MemoryManager
from services.memmgr.sizing import resolve_pools
from services.memmgr.types import PoolHandle

log = logging.getLogger(__name__)


@dataclass
class MemmgrService:
    cfg: MemmgrConfig
    manager: MemoryManager
    running: RunningServer
    pools: dict[PoolHandle, torch.Tensor]
    tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    async def stop(self, grace: float = 1.0) -> None:
        """Stop the timers and the server, then unlink the segments."""
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.running.stop(grace)
        for h in self.pools:
            segment.destroy_segment(h)
        self.pools.clear()


async def start(cfg: MemmgrConfig, mesh: mesh_config.MeshConfig | None = None, device: str = "cpu",
                port: int | None = None, host: str | None = None, token: str | None = None) -> MemmgrService:
    """Create the pools and the manager, start serving and the timers; health SERVING at return.
    `token`: the internal token its callers must send (auth.py); None: open."""
    pools: dict[PoolHandle, torch.Tensor] = {}
    for p in resolve_pools(cfg, mesh, device):
        handle, tensor = segment.create_segment(p.num_blocks, cfg.block_size, p.head_dim, p.dtype, device)
        pools[handle] = tensor
        log.info("pool %s: %d blocks of %d tokens (%s %s)", handle.name, p.num_blocks, cfg.block_size,
                 p.dtype, tuple(tensor.shape))
    manager = MemoryManager(list(pools), cfg.heartbeat_timeout_s, cfg.quota, unit_id=cfg.unit_id)
    try:
        auth = InternalAuth(token)
        running = await start_server(lambda s: servicer.register(s, manager, auth), host or cfg.host,
                                     cfg.port if port is None else port)
    except BaseException:
        for h in pools:
            segment.destroy_segment(h)
        raise
    svc = MemmgrService(cfg, manager, running, pools)
    svc.tasks = [asyncio.create_task(_every(min(cfg.heartbeat_timeout_s / 4, 1.0), _expire, manager))]
    if cfg.quota.adapt_interval_s > 0:
        svc.tasks.append(asyncio.create_task(_every(cfg.quota.adapt_interval_s, _adapt, manager)))
    if cfg.integrity_interval_s > 0:
        svc.tasks.append(asyncio.create_task(_every(cfg.integrity_interval_s, _integrity, manager)))
    await running.ready()
    return svc


async def _every(interval: float, fn, manager: MemoryManager) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            fn(manager)
        except Exception:  # a timer must never die
            log.exception("memmgr timer %s failed", fn.__name__)


def _expire(m: MemoryManager) -> None:
    for sid in m.expire():
        log.warning("session %s expired: its blocks returned to the pool", sid)


def _adapt(m: MemoryManager) -> None:
    for name, old, new in m.adapt():
        log.info("ADBS quota %s: %d -> %d blocks", name, old, new)


def _integrity(m: MemoryManager) -> None:
    try:
        m.check()
    except AssertionError as e:
        log.error("INTEGRITY CHECK FAILED: %s", e)


async def serve(mesh: mesh_config.MeshConfig, port: int | None = None, host: str | None = None) -> None:
    """Run memmgr for the mesh's config until SIGINT/SIGTERM."""
    cfg = MemmgrConfig.from_section(mesh.section("memmgr"))
    svc = await start(cfg, mesh, mesh.cluster.device, port, host, mesh.internal_token)
    log.info("memmgr %s serving on %s:%d", cfg.unit_id, host or cfg.host, svc.port)

    async def cleanup() -> None:
        for t in svc.tasks:
            t.cancel()
        for h in svc.pools:
            segment.destroy_segment(h)

    drain = mesh.drain("memmgr")
    await serve_until_signal(svc.running, cleanup, drain.grace_s, drain.pre_stop_s)


def main(config_path: str, port: int | None = None, host: str | None = None) -> int:
    """`muxserve memmgr --config FILE`."""
    install_uvloop()
    asyncio.run(serve(mesh_config.load(config_path), port, host))
    return 0
