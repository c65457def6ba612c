"""The worker service: hosts the LLMs of one unit and serves muxserve.v1.Worker.

Boot: build the unit's engine (no LLM yet), start the gRPC server (NOT_SERVING), then either load the
static `worker.models` list or follow the placer's placement; report SERVING once the first set of
LLMs is loaded, or at once as a spare (the placement has no unit for it: it hosts nothing until the
placer hands it the unit of a worker that died). SIGTERM: NOT_SERVING, drain in-flight streams, close the engine (job processes end).
"""

from __future__ import annotations

import asyncio
import logging
import os

from muxserve import config as cfg, validation
from muxserve.serving import RunningServer, install_uvloop, serve_until_signal, start_server
from muxserve.v1 import worker_pb2, worker_pb2_grpc
from services.worker.config import METRICS_PORT_OFFSET, WorkerConfig
from services.worker.follower import PlacementFollower, UnitAssignment
from services.worker.kv import make_backend
from services.worker.metrics import serve_metrics
from services.worker.engine.runner import freeze_heap
from services.worker.engine.types import (CapacityError, InvalidRequestError, ModelLoadError, ModelNotReadyError,
                                          PoolLostError, UnknownModelError)
from services.worker.failures import failure_reason
from services.worker.servicer import WorkerServicer

log = logging.getLogger("muxserve.worker")


class Worker:
    """The unit's engine plus how it follows the placement; usable without gRPC."""

    def __init__(self, mesh: cfg.MeshConfig, wcfg: WorkerConfig):
        self.mesh, self.wcfg = mesh, wcfg
        self.engine = None  # AsyncUnitEngine, built with the first LLMs (its pool is sized by them)
        self.kv = make_backend(mesh, wcfg)  # KV blocks: memmgr leases or a local pool (services/worker/kv.py)
        self.ready = asyncio.Event()
        self._draining: dict[str, asyncio.Task] = {}
        self._loading: set[str] = set()  # assigned here, not loaded yet
        self.failed: dict[str, str] = {}  # assigned here, failed to load -> why (not retried while assigned here)
        self.assignment = UnitAssignment(0, "", {})  # the unit's mode, devices and shares (placement)
        self.metrics_server = None  # services/worker/metrics.py, set by serve()
        self.bounds = validation.bounds_from_section(mesh.section("router"))  # the router's, checked again here

    def llm_stats(self) -> dict[str, dict]:
        """{llm: {max_model_len, running, waiting, draining}} for GetStatus."""
        if self.engine is None:
            return {}
        stats = self.engine.stats()["llms"]
        return {name: {**stats.get(name, {}), "max_model_len": h.max_model_len, "draining": h.draining}
                for name, h in self.engine.engine.llms.items()}

    async def apply(self, assignment: UnitAssignment) -> None:
        """Load LLMs newly assigned, drain then unload removed ones (in-flight requests finish)."""
        from services.worker.engine.config import LLMConfig

        for name in set(assignment.llms) & set(self._draining):  # moved back while draining: reload after
            await asyncio.shield(self._draining[name])
        self.assignment = assignment
        self.failed = {n: why for n, why in self.failed.items() if n in assignment.llms}  # moved away: forget
        if self.engine is not None:  # shares and mode take effect at each job's next dispatch
            self.engine.engine.set_placement(assignment.shares, assignment.mode)
        hosted = set(self.engine.engine.llms) if self.engine else set()
        new = []
        for name in sorted(set(assignment.llms) - hosted - set(self.failed)):
            spec = self.mesh.model(name)
            if spec is None:
                log.warning("placement names unknown model %r: skipped", name)
                continue
            new.append(LLMConfig(name, spec.path, assignment.llms[name] or spec.rate))
        self._loading |= {c.name for c in new}
        try:
            await self._load(new)
        finally:
            self._loading -= {c.name for c in new}
        for name in sorted(hosted - set(assignment.llms)):
            if name not in self._draining:
                log.info("draining then unloading %s", name)
                self._draining[name] = asyncio.ensure_future(self._unload(name))
        self.ready.set()

    async def _load(self, new: list) -> None:
        """Load `new` LLMConfigs one by one: the first that loads builds the engine, later ones join it. One that
        fails (unsupported architecture, missing or corrupt weights, too big for the pool) is recorded in
        `failed` with its reason, logged, and skipped: the others load and serve."""
        for llm in new:
            try:
                await self._load_one(llm)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever the reason, this LLM fails alone
                self.failed[llm.name] = failure_reason(exc)
                log.error("model %r (%s) failed to load: %s; the unit serves %s", llm.name, llm.path,
                          self.failed[llm.name], sorted(self.engine.engine.llms) if self.engine else "nothing")

    async def _load_one(self, llm) -> None:
        from services.worker.engine.config import EngineConfig

        log.info("loading %s from %s", llm.name, llm.path)
        if self.engine is not None:
            await self.kv.add_llm(self.engine, llm)
            return
        section = self.wcfg.engine_section(self.mesh.cluster.device)
        engine = EngineConfig.from_section({**section, **unit_engine_keys(self.assignment, self.mesh.cluster)})
        engine = await asyncio.to_thread(engine.resolve_dtype, [llm.path])  # auto -> the unit's one pool dtype
        log.info("unit %s: mode %s, devices %s, shares %s", self.assignment.unit_id or "static",
                 engine.mode, self.assignment.devices or "all", engine.compute_shares or "none (all admitted)")
        self.engine = await self.kv.create_engine([llm], engine)

    async def _unload(self, name: str) -> None:
        try:
            await asyncio.wait_for(self.engine.remove_llm(name, drain=True), self.wcfg.drain_timeout_s)
        except asyncio.TimeoutError:
            log.warning("%s did not drain in %.0fs: aborting its requests", name, self.wcfg.drain_timeout_s)
            await self.engine.remove_llm(name, drain=False)
        finally:
            self._draining.pop(name, None)

    async def load_static(self) -> None:
        rates = {}
        for name in self.wcfg.models:
            spec = self.mesh.model(name)
            if spec is None:
                raise cfg.ConfigError(f"worker.models names {name!r}, which is not in `models`")
            rates[name] = spec.rate
        await self.apply(UnitAssignment(0, "static", rates))

    def generate(self, request_id, llm, prompt, prompt_token_ids, sampling, add_special_tokens=None):
        """The engine's chunk stream (AsyncUnitEngine.generate). A request the router would refuse fails
        with InvalidRequestError (the shared checks); a model that failed to load here with ModelLoadError
        (its reason); one being loaded or drained here (re-placement) with ModelNotReadyError; before any
        LLM loads, UnknownModelError; a model with `max_waiting` requests already waiting, CapacityError
        (RESOURCE_EXHAUSTED)."""
        try:  # exactly the router's checks (muxserve/validation.py): this gRPC is reachable without it
            validation.check_request(request_id, prompt, sampling, self.bounds)
        except InvalidRequestError as exc:
            return _fail(exc)
        if llm in self.failed:
            return _fail(ModelLoadError(f"model {llm!r} failed to load on this worker: {self.failed[llm]}"))
        if llm in self._loading or llm in self._draining:
            return _not_ready(llm, "loading" if llm in self._loading else "draining")
        if self.engine is None:
            return _not_hosted(llm)
        if getattr(self.kv, "recovering", False):  # memmgr session lost: services/worker/kv.py
            return _fail(PoolLostError("this worker is re-attaching to memmgr's KV pool; retry"))
        waiting = self.engine.stats()["llms"].get(llm, {}).get("waiting", 0)
        if waiting >= self.wcfg.max_waiting:
            return _fail(CapacityError(f"model {llm!r} has {waiting} requests waiting on this worker "
                                       f"(worker.max_waiting {self.wcfg.max_waiting}); retry later"))
        return self.engine.generate(request_id, llm, prompt, prompt_token_ids, sampling, add_special_tokens)

    async def close(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        for task in list(self._draining.values()):
            task.cancel()
        if self.engine is not None:
            await self.engine.close()
        await self.kv.close()  # memmgr mode: ends the session, every block goes back


def start_metrics(worker: Worker, wcfg: WorkerConfig, host: str, grpc_port: int):
    """/metrics on worker.metrics_port (default: the gRPC port + 1000; -1: none)."""
    port = wcfg.metrics_port if wcfg.metrics_port is not None else grpc_port + METRICS_PORT_OFFSET
    return None if port == -1 else serve_metrics(worker, host, port)


def unit_engine_keys(a: UnitAssignment, cluster) -> dict:
    """Engine keys from the placement: mode, job shares and the unit's devices (CPU: its cores, the
    unit's local device ids mapped onto this process's cores; CUDA: the worker's CUDA_VISIBLE_DEVICES,
    set here before the engine touches CUDA, unless the environment already sets it)."""
    keys: dict = {"mode": a.mode}
    if a.shares:
        keys["compute_shares"] = dict(a.shares)
    if a.devices:
        local = sorted({d % cluster.devices_per_node for d in a.devices})
        if cluster.device == "cpu":
            mine = sorted(os.sched_getaffinity(0))
            keys["cores"] = sorted({mine[i % len(mine)] for i in local})
        elif "CUDA_VISIBLE_DEVICES" not in os.environ:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, local))
    return keys


def _not_ready(llm: str, what: str):
    return _fail(ModelNotReadyError(f"model {llm!r} is {what} on this worker (re-placement); retry"))


def _not_hosted(llm: str):
    return _fail(UnknownModelError(f"model {llm!r} is not hosted here (no LLM loaded yet)"))


async def _fail(exc: Exception):
    raise exc
    yield  # an async generator, like the engine's stream


async def serve(mesh: cfg.MeshConfig, port: int | None = None, host: str | None = None,
                worker_id: str | None = None, num_devices: int | None = None) -> tuple[RunningServer, Worker, asyncio.Task | None]:
    """Start a worker; returns (server, worker, follower task or None). SERVING once LLMs are loaded."""
    sec = mesh.section("worker")
    wcfg = WorkerConfig.from_section(sec, worker_id)
    worker = Worker(mesh, wcfg)
    servicer = WorkerServicer(worker, wcfg.worker_id)

    def register(server):
        worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
        return [worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name]

    running = await start_server(register, host or wcfg.host, wcfg.port if port is None else port)
    worker.metrics_server = start_metrics(worker, wcfg, host or wcfg.host, running.port)
    task = None
    if wcfg.models:
        await worker.load_static()
    else:
        address = wcfg.advertised_address(running.port)

        async def apply(assignment: UnitAssignment) -> None:
            await worker.apply(assignment)
            servicer.unit_id, servicer.placement_version = assignment.unit_id, assignment.version

        follower = PlacementFollower(mesh.address("placer"), wcfg.worker_id, address,
                                     num_devices or mesh.cluster.devices_per_node, apply,
                                     failures=lambda: dict(worker.failed), spare=worker.ready.set)
        task = asyncio.ensure_future(follower.run())
        ready = asyncio.ensure_future(worker.ready.wait())
        await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():  # the follower ended (it only does on a bug): fail the start, never hang
            ready.cancel()
            task.result()
            raise RuntimeError("the placement follower stopped before the first placement was applied")
    await running.ready()
    return running, worker, task


def main(config_path: str, port: int | None = None, host: str | None = None,
         worker_id: str | None = None, num_devices: int | None = None) -> int:
    install_uvloop()
    mesh = cfg.load(config_path)

    async def run() -> None:
        running, worker, task = await serve(mesh, port, host, worker_id or os.environ.get("MUXSERVE_WORKER_ID"),
                                            num_devices)
        freeze_heap()  # the loaded worker: full collections skip it from now on

        async def on_stop() -> None:
            if task is not None:
                task.cancel()
            await worker.close()

        drain = mesh.drain("worker")
        await serve_until_signal(running, on_stop, drain.grace_s, drain.pre_stop_s)

    asyncio.run(run())
    return 0
