"""The worker service: hosts the LLMs of one unit and serves muxserve.v1.Worker.

Boot: build the unit's engine (no LLM yet), start the gRPC server (NOT_SERVING), then either load the
static `worker.models` list or follow the placer's placement; report SERVING once the first set of
LLMs is loaded. SIGTERM: NOT_SERVING, drain in-flight streams, close the engine (job processes end).
"""

from __future__ import annotations

import asyncio
import logging
import os

from muxserve import config as cfg
from muxserve.serving import RunningServer, install_uvloop, serve_until_signal, start_server
from muxserve.v1 import worker_pb2, worker_pb2_grpc
from services.worker.config import WorkerConfig
from services.worker.follower import PlacementFollower, UnitAssignment
from services.worker.servicer import WorkerServicer

log = logging.getLogger("muxserve.worker")


class Worker:
    """The unit's engine plus how it follows the placement; usable without gRPC."""

    def __init__(self, mesh: cfg.MeshConfig, wcfg: WorkerConfig):
        from services.worker.engine.async_engine import AsyncUnitEngine
        from services.worker.engine.config import EngineConfig

        self.mesh, self.wcfg = mesh, wcfg
        self.engine = AsyncUnitEngine([], EngineConfig.from_section(wcfg.engine))
        self.ready = asyncio.Event()

    async def apply(self, assignment: UnitAssignment) -> None:
        """Load LLMs newly assigned, drain then unload removed ones."""
        from services.worker.engine.engine import LLMConfig

        hosted = set(self.engine.llm_stats())
        for name in sorted(set(assignment.llms) - hosted):
            spec = self.mesh.model(name)
            if spec is None:
                log.warning("placement names unknown model %r: skipped", name)
                continue
            log.info("loading %s from %s", name, spec.path)
            await self.engine.add_llm(LLMConfig(name, spec.path, assignment.llms[name] or spec.rate))
        for name in sorted(hosted - set(assignment.llms)):
            log.info("draining then unloading %s", name)
            asyncio.ensure_future(self.engine.remove_llm(name, drain=True))
        self.ready.set()

    async def load_static(self) -> None:
        rates = {}
        for name in self.wcfg.models:
            spec = self.mesh.model(name)
            if spec is None:
                raise cfg.ConfigError(f"worker.models names {name!r}, which is not in `models`")
            rates[name] = spec.rate
        await self.apply(UnitAssignment(0, "static", rates))

    async def close(self) -> None:
        await self.engine.close()


async def serve(mesh: cfg.MeshConfig, port: int | None = None, host: str | None = None,
                worker_id: str | None = None) -> tuple[RunningServer, Worker, asyncio.Task | None]:
    """Start a worker; returns (server, worker, follower task or None). SERVING once LLMs are loaded."""
    sec = mesh.section("worker")
    wcfg = WorkerConfig.from_section(sec, worker_id)
    worker = Worker(mesh, wcfg)
    servicer = WorkerServicer(worker.engine, wcfg.worker_id)

    def register(server):
        worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
        return [worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name]

    running = await start_server(register, host or wcfg.host, wcfg.port if port is None else port)
    task = None
    if wcfg.models:
        await worker.load_static()
    else:
        address = wcfg.advertised_address(running.port)

        async def apply(assignment: UnitAssignment) -> None:
            await worker.apply(assignment)
            servicer.unit_id, servicer.placement_version = assignment.unit_id, assignment.version

        follower = PlacementFollower(mesh.address("placer"), wcfg.worker_id, address,
                                     mesh.cluster.devices_per_node, apply)
        task = asyncio.ensure_future(follower.run())
        await worker.ready.wait()
    await running.ready()
    return running, worker, task


def main(config_path: str, port: int | None = None, host: str | None = None,
         worker_id: str | None = None) -> int:
    install_uvloop()
    mesh = cfg.load(config_path)

    async def run() -> None:
        running, worker, task = await serve(mesh, port, host, worker_id or os.environ.get("MUXSERVE_WORKER_ID"))

        async def on_stop() -> None:
            if task is not None:
                task.cancel()
            await worker.close()

        await serve_until_signal(running, on_stop)

    asyncio.run(run())
    return 0
