"""gRPC front of the placer: converts protobuf <-> dataclasses and maps errors to status codes."""

from __future__ import annotations

import grpc

from muxserve.v1 import placer_pb2, placer_pb2_grpc

from .placement import Placement
from .service import PlacerService
from .workers import WorkerError


def to_proto(p: Placement) -> placer_pb2.Placement:
    units = [placer_pb2.Unit(
        unit_id=u.unit_id, devices=u.devices, worker_address=u.worker_address,
        est_throughput=u.est_throughput, mode=u.mode,
        llms=[placer_pb2.LLMPlacement(name=m.name, prefill_share=m.prefill_share,
                                      decode_share=m.decode_share, rate=m.rate,
                                      est_throughput=m.est_throughput, batch=m.batch) for m in u.llms])
        for u in p.units]
    return placer_pb2.Placement(version=p.version, policy=p.policy, objective=p.objective,
                                units=units, total_rate=p.total_rate, failed_models=p.failed_models)


class PlacerServicer(placer_pb2_grpc.PlacerServicer):
    def __init__(self, service: PlacerService):
        self.service = service

    async def RegisterWorker(self, request, context):
        try:
            unit_id, version = await self.service.register(request.worker_id, request.address,
                                                           request.num_devices, dict(request.failed_models))
        except WorkerError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return placer_pb2.RegisterWorkerResponse(unit_id=unit_id, version=version,
                                                 heartbeat_s=self.service.workers.ttl_s / 3)

    async def GetPlacement(self, request, context):
        latest = self.service.feed.latest
        if latest is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no placement published yet")
        return to_proto(latest)

    async def WatchPlacement(self, request, context):
        version = 0
        while True:
            latest = await self.service.feed.wait_newer(version)
            version = latest.version
            yield to_proto(latest)
