"""Boots the router: gRPC `muxserve.v1.Router` with health and reflection (muxserve.serving).

`serve(mesh, port=None, host=None)` starts everything and returns a `RouterServer` handle (port 0 picks
a free port; None takes the config's). Background tasks: the popularity flusher, the context-length
refresher (workers' GetStatus) and, unless a static routing table is configured, the placement
watcher. `main(config_path, port, host)` runs it until SIGTERM/SIGINT (`muxserve router --config FILE
[--port P] [--host H]`, or `python -m services.router ...`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis

from muxserve import config as mesh_config
from muxserve.config import MeshConfig
from muxserve.popularity import PopularityRecorder, PopularityStore
from muxserve.serving import RunningServer, install_uvloop, serve_until_signal, start_server
from muxserve.v1 import router_pb2, router_pb2_grpc
from services.router.config import RouterConfig, from_mesh
from services.router.forward import Forwarder, WorkerClients
from services.router.limits import LimitsRefresher
from services.router.placement import PlacementWatcher
from services.router.routing import PlacementView, RoutingTable
from services.router.servicer import RouterServicer

log = logging.getLogger(__name__)

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name


@dataclass
class RouterServer:
    running: RunningServer
    config: RouterConfig
    servicer: RouterServicer
    recorder: PopularityRecorder
    watcher: PlacementWatcher | None
    clients: WorkerClients
    redis: aioredis.Redis
    limits: LimitsRefresher

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def address(self) -> str:
        host = self.config.host if self.config.host not in ("0.0.0.0", "::", "[::]") else "127.0.0.1"
        return f"{host}:{self.port}"

    async def stop(self, grace: float = 1.0) -> None:
        """Report NOT_SERVING, drain in-flight streams for `grace` s, then stop the background tasks."""
        await self.running.stop(grace)
        await self.close_background()

    async def close_background(self) -> None:
        if self.watcher is not None:
            await self.watcher.close()
        await self.limits.close()
        await self.recorder.close()
        await self.clients.close()
        await self.redis.aclose()


async def serve(mesh: MeshConfig, port: int | None = None, host: str | None = None) -> RouterServer:
    cfg = from_mesh(mesh)
    cfg.port = cfg.port if port is None else port
    cfg.host = cfg.host if host is None else host
    redis = aioredis.from_url(cfg.redis_url, socket_timeout=cfg.redis_timeout_s,
                              socket_connect_timeout=cfg.redis_timeout_s)
    recorder = PopularityRecorder(PopularityStore(redis, cfg.bucket_s, cfg.ttl_s), timeout_s=cfg.redis_timeout_s)
    table = RoutingTable(PlacementView.static(cfg.static_workers) if cfg.static else None)
    watcher = None if cfg.static else PlacementWatcher(table, cfg.placer_address, redis,
                                                       redis_timeout_s=cfg.redis_timeout_s)
    clients = WorkerClients()
    servicer = RouterServicer(cfg.models, table, Forwarder(table, clients, cfg.unavailable_wait_s), recorder)
    limits = LimitsRefresher(cfg.models, table, clients, cfg.status_interval_s)

    def register(server):
        router_pb2_grpc.add_RouterServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    running = await start_server(register, cfg.host, cfg.port, reflection=True)
    recorder.start()
    if watcher is not None:
        watcher.start()
    limits.start()
    log.info("router on %s:%d; workers from %s", cfg.host, running.port,
             "static table" if cfg.static else f"placer {cfg.placer_address}")
    await running.ready()
    return RouterServer(running, cfg, servicer, recorder, watcher, clients, redis, limits)


async def _run(config_path: str, port: int | None, host: str | None) -> None:
    router = await serve(mesh_config.load(config_path), port, host)
    await serve_until_signal(router.running, on_stop=router.close_background)


def main(config_path: str, port: int | None = None, host: str | None = None) -> int:
    """Run the router until SIGTERM/SIGINT; port/host override the config's router section."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_uvloop()
    asyncio.run(_run(config_path, port, host))
    return 0


def cli(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m services.router", description="run the muxserve router")
    ap.add_argument("--config", required=True, help="the deployment YAML")
    ap.add_argument("--port", type=int, default=None, help="listen port (overrides the config)")
    ap.add_argument("--host", default=None, help="listen host (overrides the config)")
    a = ap.parse_args(argv)
    main(a.config, a.port, a.host)
