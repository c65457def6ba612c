"""Keeps a RoutingTable current: watches the placer's placement stream, with Redis as the fallback.

`PlacementWatcher.run` subscribes to `muxserve.v1.Placer.WatchPlacement` and adopts every placement it
streams. When the placer cannot be reached (or its stream ends) it reads the last published placement
from Redis keys `muxserve:placement` (JSON) and `muxserve:placement:version` (adopted only if
newer than the cached one), then reconnects with
a backoff growing from `retry_s` to `max_retry_s`. The cached view is kept through any outage.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from google.protobuf import json_format

from muxserve.v1 import placer_pb2, placer_pb2_grpc
from services.router.routing import Host, PlacementView, RoutingTable

log = logging.getLogger(__name__)

REDIS_KEY = "muxserve:placement"
VERSION_KEY = "muxserve:placement:version"


def view_from_placement(p: placer_pb2.Placement) -> PlacementView:
    """Models -> units with a worker address (units with no worker yet host nothing routable)."""
    hosts: dict[str, list[Host]] = {}
    for unit in p.units:
        if not unit.worker_address:
            continue
        for llm in unit.llms:
            hosts.setdefault(llm.name, []).append(Host(unit.unit_id, unit.worker_address))
    return PlacementView(int(p.version), {m: tuple(hs) for m, hs in hosts.items()}, dict(p.failed_models))


def view_from_json(text: str | bytes) -> PlacementView:
    """Parse the placement JSON the placer stores in Redis (proto3 JSON, either field-name style)."""
    return view_from_placement(json_format.Parse(text, placer_pb2.Placement(), ignore_unknown_fields=True))


class PlacementWatcher:
    def __init__(self, table: RoutingTable, placer_address: str, redis=None,
                 retry_s: float = 0.2, max_retry_s: float = 5.0, redis_timeout_s: float = 0.5):
        self.table = table
        self.placer_address = placer_address
        self.redis = redis
        self.retry_s, self.max_retry_s, self.redis_timeout_s = retry_s, max_retry_s, redis_timeout_s
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="placement-watch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def run(self) -> None:
        backoff = self.retry_s
        while True:
            if await self._watch():
                backoff = self.retry_s
            await self._load_from_redis()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_retry_s)

    async def _watch(self) -> bool:
        """Follow the placer's stream until it fails or ends; True if it delivered a placement."""
        got = False
        try:
            async with grpc.aio.insecure_channel(self.placer_address) as channel:
                stream = placer_pb2_grpc.PlacerStub(channel).WatchPlacement(placer_pb2.GetPlacementRequest())
                async for placement in stream:
                    self.table.update(view_from_placement(placement), force=True)
                    got = True
            log.info("placer %s ended the placement stream", self.placer_address)
        except grpc.aio.AioRpcError as exc:
            log.warning("placer %s: %s %s", self.placer_address, exc.code().name, exc.details())
        return got

    async def _load_from_redis(self) -> None:
        if self.redis is None:
            return
        try:
            text, version = await asyncio.wait_for(self.redis.mget(REDIS_KEY, VERSION_KEY), self.redis_timeout_s)
            if text:
                view = view_from_json(text)
                if version is not None:  # the placer keeps the authoritative number beside the JSON
                    view = PlacementView(int(version), view.hosts, view.failed)
                self.table.update(view)
        except Exception as exc:  # noqa: BLE001 - a bad or missing fallback must not stop the watcher
            log.debug("placement from redis unavailable: %s", exc)
