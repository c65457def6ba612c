"""How every muxserve service boots: one grpc.aio server with health (and optionally reflection).

`start_server` builds the server, lets the caller register its servicers, adds the standard
grpc.health.v1 service (NOT_SERVING until the caller calls `ready()`), binds host:port (port 0 picks a
free port) and starts it. `serve_until_signal` runs a started server until SIGINT/SIGTERM, then drains
in-flight RPCs for `grace` seconds and stops.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

log = logging.getLogger(__name__)


def install_uvloop() -> None:
    """Use uvloop for new event loops where it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]

    async def ready(self) -> None:
        """Report SERVING for the server as a whole and each named service."""
        for name in ("", *self.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def not_serving(self) -> None:
        for name in ("", *self.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self, grace: float = 5.0) -> None:
        await self.not_serving()
        await self.server.stop(grace)


async def start_server(
    register: Callable[[grpc.aio.Server], Iterable[str]],
    host: str = "127.0.0.1",
    port: int = 0,
    reflection: bool = False,
    options: list | None = None,
    interceptors: list | None = None,
) -> RunningServer:
    """Build, register (register returns the full service names it added), bind and start."""
    from muxserve.decode_guard import DecodeGuard  # undecodable requests: INVALID_ARGUMENT, not UNKNOWN

    server = grpc.aio.server(interceptors=[DecodeGuard(), *(interceptors or [])], options=options or [
        ("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)])
    names = tuple(register(server))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if reflection:
        from grpc_reflection.v1alpha import reflection as refl

        refl.enable_server_reflection((*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                                       refl.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    await server.start()
    log.info("listening on %s:%d (%s)", host, bound, ", ".join(names))
    return RunningServer(server, bound, health_servicer, names)


async def serve_until_signal(running: RunningServer, on_stop: Callable[[], Awaitable[None]] | None = None,
                             grace: float = 5.0) -> None:
    """Wait for SIGINT/SIGTERM, then report NOT_SERVING, drain for `grace` s, run on_stop, stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received: draining")
    await running.stop(grace)
    if on_stop is not None:
        await on_stop()


async def wait_serving(address: str, timeout: float = 60.0, service: str = "") -> None:
    """Poll grpc.health.v1 at `address` until it answers SERVING; raise TimeoutError otherwise."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with grpc.aio.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{address} not SERVING after {timeout:.0f}s")
            await asyncio.sleep(0.2)
