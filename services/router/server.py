"""Boots the router: gRPC `muxserve.v1.Router` with health and reflection (muxserve.serving), and the
OpenAI-compatible HTTP API with /metrics (services/router/openai_api), both over one RouterCore.

`serve(mesh, port=None, host=None, http_port=None)` starts everything and returns a `RouterServer`
handle (port 0 picks a free port; None takes the config's; http_port -1 serves no HTTP). Both fronts
check API keys (auth.py) and refuse messages over router.max_message_bytes (gRPC RESOURCE_EXHAUSTED,
HTTP 413). Background tasks: the popularity flusher, the context-length refresher (workers'
GetStatus) and, unless a static routing table is configured, the placement watcher.
`main(config_path, port, host, http_port)` runs it until SIGTERM/SIGINT (`muxserve router --config
FILE [--port P] [--host H] [--http-port P]`, or `python -m services.router ...`).
"""

from __future__ import annotations

import asyncio
import sys
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis

from muxserve import config as mesh_config
from muxserve.config import MeshConfig
from muxserve.popularity import PopularityRecorder, PopularityStore
from muxserve.serving import RunningServer, install_uvloop, serve_until_signal, start_server
from muxserve.v1 import router_pb2, router_pb2_grpc
from services.router.auth import ApiKeys, AuthInterceptor
from services.router.config import RouterConfig, from_mesh
from services.router.core import RouterCore
from services.router.forward import Forwarder, WorkerClients
from services.router.limits import LimitsRefresher
from services.router.metrics import RouterMetrics
from services.router.openai_api.app import build_app
from services.router.openai_api.server import HttpServer
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
    http: HttpServer | None = None

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def core(self) -> RouterCore:
        return self.servicer.core

    @property
    def http_url(self) -> str:
        """Base URL of the OpenAI-compatible API (…/v1), when HTTP is served."""
        host = self.config.http_host or self.config.host
        host = host if host not in ("0.0.0.0", "::", "[::]") else "127.0.0.1"
        return f"http://{host}:{self.http.port}/v1" if self.http else ""

    @property
    def address(self) -> str:
        host = self.config.host if self.config.host not in ("0.0.0.0", "::", "[::]") else "127.0.0.1"
        return f"{host}:{self.port}"

    async def stop(self, grace: float = 1.0) -> None:
        """Report NOT_SERVING, drain in-flight streams for `grace` s, then stop the background tasks."""
        await self.running.stop(grace)
        await self.close_background()

    async def close_background(self) -> None:
        if self.http is not None:
            await self.http.stop()
        if self.watcher is not None:
            await self.watcher.close()
        await self.limits.close()
        await self.recorder.close()
        await self.clients.close()
        await self.redis.aclose()


async def serve(mesh: MeshConfig, port: int | None = None, host: str | None = None,
                http_port: int | None = None) -> RouterServer:
    cfg = from_mesh(mesh)
    cfg.port = cfg.port if port is None else port
    cfg.host = cfg.host if host is None else host
    cfg.http_port = cfg.http_port if http_port is None else http_port
    redis = aioredis.from_url(cfg.redis_url, socket_timeout=cfg.redis_timeout_s,
                              socket_connect_timeout=cfg.redis_timeout_s)
    recorder = PopularityRecorder(PopularityStore(redis, cfg.bucket_s, cfg.ttl_s), timeout_s=cfg.redis_timeout_s)
    table = RoutingTable(PlacementView.static(cfg.static_workers) if cfg.static else None)
    watcher = None if cfg.static else PlacementWatcher(table, cfg.placer_address, redis,
                                                       redis_timeout_s=cfg.redis_timeout_s)
    clients = WorkerClients()
    metrics = RouterMetrics()
    metrics.placement_version.set_function(lambda: table.version)
    core = RouterCore(cfg.models, table, Forwarder(table, clients, cfg.unavailable_wait_s), recorder,
                      cfg.bounds, cfg.max_concurrent_streams, metrics)
    servicer = RouterServicer(core)
    limits = LimitsRefresher(cfg.models, table, clients, cfg.status_interval_s)
    keys = ApiKeys(cfg.api_keys)
    keys.log_mode()

    def register(server):
        router_pb2_grpc.add_RouterServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    # No per-connection grpc.max_concurrent_streams: HTTP/2 would queue a call past it silently; the
    # router's own bound (RouterCore) answers RESOURCE_EXHAUSTED instead.
    options = [("grpc.max_receive_message_length", cfg.max_message_bytes),
               ("grpc.max_send_message_length", 64 << 20)]
    running = await start_server(register, cfg.host, cfg.port, reflection=True, options=options,
                                 interceptors=[AuthInterceptor(keys)])
    http = None
    if cfg.http_port != -1:
        http = HttpServer()
        await http.start(build_app(core, keys, lambda: running.serving), cfg.http_host or cfg.host, cfg.http_port,
                         cfg.max_message_bytes)
    recorder.start()
    if watcher is not None:
        watcher.start()
    limits.start()
    log.info("router on %s:%d; workers from %s", cfg.host, running.port,
             "static table" if cfg.static else f"placer {cfg.placer_address}")
    await running.ready()
    return RouterServer(running, cfg, servicer, recorder, watcher, clients, redis, limits, http)


async def _run(config_path: str, port: int | None, host: str | None, http_port: int | None) -> None:
    mesh = mesh_config.load(config_path)
    router = await serve(mesh, port, host, http_port)
    drain = mesh.drain("router")
    await serve_until_signal(router.running, router.close_background, drain.grace_s, drain.pre_stop_s)


def main(config_path: str, port: int | None = None, host: str | None = None, http_port: int | None = None) -> int:
    """Run the router until SIGTERM/SIGINT; port/host/http_port override the config's router section."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_uvloop()
    asyncio.run(_run(config_path, port, host, http_port))
    return 0


def cli(argv: list[str] | None = None) -> None:
    """`python -m services.router`: the same as `muxserve router` (flags, exit code 2 on a config error)."""
    from muxserve.cli import main as muxserve_main

    sys.exit(muxserve_main(["router", *(sys.argv[1:] if argv is None else argv)]))
