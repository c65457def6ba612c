"""How every muxserve service boots: one grpc.aio server with health (and optionally reflection).

`start_server` builds the server, lets the caller register its servicers, adds the standard
grpc.health.v1 service (NOT_SERVING until the caller calls `ready()`), binds host:port (port 0 picks a
free port) and starts it. `serve_until_signal` runs a started server until SIGINT/SIGTERM, then drains
(`RunningServer.drain`): health turns NOT_SERVING at once while the server keeps serving for `pre_stop`
seconds (a load balancer's window to take it out of rotation), then it stops taking new RPCs and gives
the running ones (streams) `grace` seconds to finish, then stops. A second signal stops at once.
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

    serving: bool = False  # what health says: other fronts (the router's HTTP /health) report the same

    async def ready(self) -> None:
        """Report SERVING for the server as a whole and each named service."""
        self.serving = True
        for name in ("", *self.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def not_serving(self) -> None:
        self.serving = False
        for name in ("", *self.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self, grace: float = 5.0) -> None:
        await self.not_serving()
        await self.server.stop(grace)

    async def drain(self, pre_stop: float = 0.0, grace: float = 5.0) -> None:
        """NOT_SERVING now, still serving for `pre_stop` s, then `grace` s for running RPCs, then stopped."""
        await self.not_serving()
        if pre_stop > 0:
            log.info("NOT_SERVING; still serving for %.1fs (pre-stop delay)", pre_stop)
            await asyncio.sleep(pre_stop)
        log.info("no new RPCs; running ones have %.1fs to finish", grace)
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
                             grace: float = 5.0, pre_stop: float = 0.0) -> None:
    """Wait for SIGINT/SIGTERM, drain (`RunningServer.drain`; a second signal stops at once), run on_stop."""
    loop = asyncio.get_running_loop()
    signals = asyncio.Queue()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    sig = await signals.get()
    log.info("%s received: draining (pre-stop %.1fs, grace %.1fs)", signal.Signals(sig).name, pre_stop, grace)
    draining = asyncio.ensure_future(running.drain(pre_stop, grace))
    second = asyncio.ensure_future(signals.get())
    await asyncio.wait([draining, second], return_when=asyncio.FIRST_COMPLETED)
    if not draining.done():
        log.warning("second signal: stopping now")
        draining.cancel()
        await asyncio.gather(draining, return_exceptions=True)
        await running.server.stop(0)
    second.cancel()
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
