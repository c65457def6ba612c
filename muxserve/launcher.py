"""`muxserve up`: run the whole mesh on one machine as local processes.

Starts redis-server (only if nothing answers at the configured URL), then placer, memmgr, one
worker per unit of the placer's placement plus `worker.spares` spare workers (worker i listens on
worker.port + i; a spare takes over the unit of a worker that dies) and the router (gRPC and
the OpenAI-compatible HTTP API, 127.0.0.1:8000 by default), each as `python -m muxserve.cli <service> --config FILE`, waits until each
reports SERVING on grpc.health.v1, prints every model that failed to load (by name, with the worker's reason:
the others serve), prints where to connect, and on SIGINT/SIGTERM stops them in
reverse order (SIGTERM, then SIGKILL after a grace period). `Mesh` is the same code for tests.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from muxserve import config as cfg
from muxserve.serving import install_uvloop, wait_serving

log = logging.getLogger("muxserve.up")


@dataclass
class Mesh:
    """The processes of one local deployment. `start()` returns once every service is SERVING."""

    config_path: str
    grpc_port: int | None = None          # router port override
    log_dir: str | None = None            # each service's stdout/stderr goes to <log_dir>/<name>.log
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    http_port: int | None = None          # router HTTP port override (router.http_port, default 8000)

    def __post_init__(self) -> None:
        self.mesh = cfg.load(self.config_path)
        self.log_dir = self.log_dir or tempfile.mkdtemp(prefix="muxserve-logs-")
        Path(self.log_dir).mkdir(parents=True, exist_ok=True)
        # internal RPCs (memmgr leases, quotas) need this token; without one configured, one per launch,
        # handed to the services in their environment and to the operator in <log_dir>/internal_token (0600)
        self.internal_token = self.mesh.internal_token or secrets.token_urlsafe(32)
        if not self.mesh.internal_token:
            path = Path(self.log_dir) / "internal_token"
            path.touch(mode=0o600)
            path.write_text(self.internal_token + "\n")
        self._redis_dir: str | None = None
        self._spawned: dict[str, tuple[list[str], str | None]] = {}  # name -> _spawn's arguments (respawn)
        self.failed: dict[str, str] = {}  # model -> "<placer | worker id>: why it cannot serve" (after start())

    @property
    def router_address(self) -> str:
        port = self.grpc_port or self.mesh.section("router").port
        return f"127.0.0.1:{port}"

    @property
    def http_url(self) -> str:
        """Base URL of the router's OpenAI-compatible API ("" when router.http_port is -1)."""
        sec = self.mesh.section("router")
        port = self.http_port if self.http_port is not None else sec.http_port
        host = sec.http_host or sec.host
        host = host if host not in ("0.0.0.0", "::", "[::]") else "127.0.0.1"
        return "" if port == -1 else f"http://{host}:{port}/v1"

    async def unit_sizes(self) -> list[int]:
        """Devices of each unit of the placer's current placement: one worker is started per unit."""
        import grpc

        from muxserve.v1 import placer_pb2, placer_pb2_grpc

        async with grpc.aio.insecure_channel(self.mesh.address("placer")) as ch:
            placement = await placer_pb2_grpc.PlacerStub(ch).GetPlacement(placer_pb2.GetPlacementRequest(),
                                                                          timeout=30)
        self.failed.update({m: f"placer: {why}" for m, why in placement.failed_models.items()})
        return [len(u.devices) for u in placement.units]

    async def start(self, timeout: float = 180.0) -> None:
        await self._ensure_redis()
        self._spawn("placer", [])
        self._spawn("memmgr", [])
        await self._wait("placer", self.mesh.address("placer"), timeout)
        await self._wait("memmgr", self.mesh.address("memmgr"), timeout)
        sizes = await self.unit_sizes()
        base = self.mesh.section("worker").port
        await self._start_workers(sizes, 0, timeout)
        spare = max(sizes, default=self.mesh.cluster.devices_per_node)  # a spare can take any unit
        spares = [spare] * self.mesh.section("worker").spares
        await self._start_workers(spares, len(sizes), timeout)  # after the others: none takes a unit at start
        self.failed.update(await worker_failures([f"127.0.0.1:{base + i}" for i in range(len(sizes))]))
        for name, why in sorted(self.failed.items()):
            log.error("model %r failed to load: %s", name, why)
        router_args = ["--port", str(self.grpc_port)] if self.grpc_port else []
        router_args += ["--http-port", str(self.http_port)] if self.http_port is not None else []
        self._spawn("router", router_args)
        await self._wait("router", self.router_address, timeout)

    async def _start_workers(self, sizes: list[int], first: int, timeout: float) -> None:
        """worker-<i> for i = first, first + 1, ..., listening on worker.port + i, one per entry of `sizes`
        (its devices); returns once all are SERVING."""
        base = self.mesh.section("worker").port
        for i, size in enumerate(sizes, first):
            self._spawn(f"worker-{i}", ["--port", str(base + i), "--worker-id", f"worker-{i}",
                                        "--num-devices", str(size)], service="worker")
        for i in range(first, first + len(sizes)):
            await self._wait(f"worker-{i}", f"127.0.0.1:{base + i}", timeout)

    async def respawn(self, name: str, address: str, timeout: float = 120.0) -> None:
        """Start `name` again as it was first started (after it died or was killed: what a restart
        policy does); returns once it is SERVING at `address`."""
        old = self.procs.get(name)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"{name} is still running (pid {old.pid})")
        self._spawn(name, *self._spawned[name])
        await self._wait(name, address, timeout)

    def _spawn(self, name: str, extra: list[str], service: str | None = None) -> None:
        self._spawned[name] = (extra, service)
        cmd = [sys.executable, "-m", "muxserve.cli", service or name, "--config", self.config_path, *extra]
        out = open(Path(self.log_dir) / f"{name}.log", "ab")
        env = {**os.environ, "MUXSERVE_REDIS_URL": self.mesh.redis_url, "MUXSERVE_INTERNAL_TOKEN": self.internal_token}
        self.procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        log.info("started %s (pid %d), log %s/%s.log", name, self.procs[name].pid, self.log_dir, name)

    async def _wait(self, name: str, address: str, timeout: float) -> None:
        proc = self.procs.get(name)
        waiter = asyncio.ensure_future(wait_serving(address, timeout))
        while not waiter.done():
            if proc is not None and proc.poll() is not None:
                waiter.cancel()
                raise RuntimeError(f"{name} exited with code {proc.returncode}; see {self.log_dir}/{name}.log")
            await asyncio.sleep(0.2)
        waiter.result()
        log.info("%s is SERVING at %s", name, address)

    async def _ensure_redis(self) -> None:
        import redis.asyncio as aioredis

        client = aioredis.from_url(self.mesh.redis_url, socket_connect_timeout=1)
        try:
            await client.ping()
            return
        except Exception:
            pass
        finally:
            await client.aclose()
        url = urlparse(self.mesh.redis_url)
        if url.hostname not in ("127.0.0.1", "localhost", None):
            raise RuntimeError(f"no Redis answers at {self.mesh.redis_url} and it is not local to start")
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: install it (apt-get install redis-server)")
        self._redis_dir = tempfile.mkdtemp(prefix="muxserve-redis-")
        out = open(Path(self.log_dir) / "redis.log", "ab")
        self.procs["redis"] = subprocess.Popen(
            [binary, "--port", str(url.port or 6379), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self._redis_dir], stdout=out, stderr=subprocess.STDOUT)
        await _wait_redis(self.mesh.redis_url, 20.0)
        log.info("started redis-server on port %d", url.port or 6379)

    @contextmanager
    def running(self, timeout: float = 180.0):
        """Start (stopping whatever started if that fails), yield the mesh, stop it on exit."""
        try:
            asyncio.run(self.start(timeout=timeout))
            yield self
        finally:
            self.stop()

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM every process in reverse start order, SIGKILL what is left after `grace` s (default: the
        longest drain of the config, pre_stop_s + grace_s, plus 5 s)."""
        if grace is None:
            grace = 5.0 + max(d.pre_stop_s + d.grace_s for d in map(self.mesh.drain, cfg.SERVICES))
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in %.0fs: killing", name, grace)
                    proc.kill()
                    proc.wait()
        self.procs.clear()
        if self._redis_dir:
            shutil.rmtree(self._redis_dir, ignore_errors=True)


async def worker_failures(addresses: list[str]) -> dict[str, str]:
    """{model: "<worker id>: why"} of the models that failed to load on the workers at `addresses` (GetStatus)."""
    import grpc

    from muxserve.v1 import worker_pb2, worker_pb2_grpc

    out: dict[str, str] = {}
    for address in addresses:
        async with grpc.aio.insecure_channel(address) as ch:
            status = await worker_pb2_grpc.WorkerStub(ch).GetStatus(worker_pb2.WorkerStatusRequest(), timeout=10)
        for name, why in status.failed_models.items():
            out[name] = f"{status.worker_id}: {why}"
    return out


async def _wait_redis(url: str, timeout: float) -> None:
    import redis.asyncio as aioredis

    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        client = aioredis.from_url(url, socket_connect_timeout=1)
        try:
            await client.ping()
            return
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"redis-server did not answer at {url}")
            await asyncio.sleep(0.1)
        finally:
            await client.aclose()


async def _run(mesh: Mesh) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.ensure_future(mesh.start())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([starting, stopped], return_when=asyncio.FIRST_COMPLETED)
    if starting.done() and not stop.is_set():
        starting.result()
        for name, why in sorted(mesh.failed.items()):
            print(f"muxserve: model {name!r} failed to load and is not served (its requests fail with the reason): "
                  f"{why}", file=sys.stderr, flush=True)
        http = f" OpenAI-compatible HTTP: {mesh.http_url}." if mesh.http_url else ""
        print(f"muxserve is up. Router gRPC: {mesh.router_address} (service muxserve.v1.Router).{http} "
              f"Logs: {mesh.log_dir}. Ctrl-C stops everything.", flush=True)
        await stopped


def up_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="muxserve up")
    ap.add_argument("--config", required=True)
    ap.add_argument("--grpc-port", type=int, default=None, help="router port (default: config, 50051)")
    ap.add_argument("--http-port", type=int, default=None,
                    help="router HTTP API port (default: config router.http_port, 8000; -1: off)")
    ap.add_argument("--log-dir", default=None)
    args = ap.parse_args(argv)
    install_uvloop()
    mesh = Mesh(args.config, args.grpc_port, args.log_dir, http_port=args.http_port)
    try:
        asyncio.run(_run(mesh))
    except Exception as exc:  # a service failed to start: say which and where its log is
        print(f"muxserve up failed: {exc}", file=sys.stderr)
        return 1
    finally:
        mesh.stop()
        print("muxserve stopped.", flush=True)
    return 0
