"""Boot the placer: `serve(mesh)` for tests and the launcher, `main(config_path)` for the command.

Health is NOT_SERVING until the first placement is published; then a background loop checks for
re-placement every `interval_s`. SIGTERM: NOT_SERVING, drain, stop.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from muxserve import config as mconfig
from muxserve.popularity import PopularityStore
from muxserve.serving import RunningServer, install_uvloop, serve_until_signal, start_server
from muxserve.v1 import placer_pb2, placer_pb2_grpc

from .config import PlacerConfig
from .analytic import build_cost
from .costmodel import CostTable
from .llmspec import load_specs
from .service import PlacerService
from .servicer import PlacerServicer
from .store import PlacementStore

log = logging.getLogger(__name__)
SERVICE_NAME = placer_pb2.DESCRIPTOR.services_by_name["Placer"].full_name


@dataclass
class RunningPlacer:
    running: RunningServer
    service: PlacerService
    loop_task: asyncio.Task
    redis: aioredis.Redis

    @property
    def port(self) -> int:
        return self.running.port

    async def stop(self, grace: float = 1.0) -> None:
        self.loop_task.cancel()
        await asyncio.gather(self.loop_task, return_exceptions=True)
        await self.running.stop(grace)
        await self.service.close()
        await self.redis.aclose()


def build_service(mesh: mconfig.MeshConfig, redis: aioredis.Redis, base: str | Path = ".") -> PlacerService:
    cfg = PlacerConfig.from_section(mesh.section("placer"), mesh, base)
    failed: dict[str, str] = {}
    specs = load_specs(mesh.raw, base, failed)
    for name, why in sorted(failed.items()):
        log.error("model %r is left out of the placement: %s", name, why)
    cost = build_cost(CostTable.load(cfg.cost_table_path), specs, mesh.cluster.device, cfg.gpu,
                      cfg.probe_cache)
    return PlacerService(cfg, specs, mesh.cluster.nodes, mesh.cluster.devices_per_node,
                         PlacementStore(redis), PopularityStore(redis), cost, failed)


async def serve(mesh: mconfig.MeshConfig, port: int | None = None, host: str | None = None,
                base: str | Path = ".") -> RunningPlacer:
    """Start the placer; returns once the first placement is published (health SERVING)."""
    redis = aioredis.from_url(mesh.redis_url)
    service = build_service(mesh, redis, base)
    servicer = PlacerServicer(service)

    def register(server):
        placer_pb2_grpc.add_PlacerServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    running = await start_server(register, host or service.cfg.host,
                                 service.cfg.port if port is None else port, reflection=True)
    await service.start()
    await running.ready()
    task = asyncio.get_running_loop().create_task(_replace_loop(service), name="placer-replace")
    return RunningPlacer(running, service, task, redis)


async def _replace_loop(service: PlacerService) -> None:
    while True:
        await asyncio.sleep(service.cfg.interval_s)
        try:
            await service.tick()
        except Exception:  # a failed check (Redis down, ...) must not stop the service
            log.exception("re-placement check failed")


def main(config_path: str, port: int | None = None, host: str | None = None) -> int:
    install_uvloop()
    mesh = mconfig.load(config_path)

    async def run() -> None:
        placer = await serve(mesh, port, host, Path(config_path).resolve().parent)
        drain = mesh.drain("placer")
        await serve_until_signal(placer.running, placer.service.close, drain.grace_s, drain.pre_stop_s)
        placer.loop_task.cancel()

    asyncio.run(run())
    return 0
