"""Protobuf <-> memmgr dataclasses, in one place (the servicer and the client use these)."""

from __future__ import annotations

from muxserve.v1 import memmgr_pb2 as pb
from services.memmgr.types import LLMSpec, LLMUsage, PoolHandle, PoolStats, Stats


def handle_to_proto(h: PoolHandle) -> pb.PoolHandle:
    return pb.PoolHandle(kind=h.kind, name=h.name, num_blocks=h.num_blocks, block_size=h.block_size,
                         head_dim=h.head_dim, dtype=h.dtype, payload=h.payload)


def handle_from_proto(m: pb.PoolHandle) -> PoolHandle:
    return PoolHandle(m.kind, m.name, m.num_blocks, m.block_size, m.head_dim, m.dtype, bytes(m.payload))


def spec_to_proto(s: LLMSpec) -> pb.LLMSpec:
    return pb.LLMSpec(name=s.name, num_layers=s.num_layers, num_kv_heads=s.num_kv_heads,
                      head_dim=s.head_dim, dtype=s.dtype, rate=s.rate)


def spec_from_proto(m: pb.LLMSpec) -> LLMSpec:
    return LLMSpec(m.name, m.num_layers, m.num_kv_heads, m.head_dim, m.dtype, m.rate)


def stats_to_proto(s: Stats) -> pb.StatsResponse:
    return pb.StatsResponse(
        capacity_blocks=s.capacity_blocks, free_blocks=s.free_blocks, sessions=s.sessions,
        expired_sessions=s.expired_sessions, unit_id=s.unit_id,
        llms=[pb.LLMUsage(name=u.name, used_blocks=u.used_blocks, quota_blocks=u.quota_blocks,
                          head_dim=u.head_dim, dtype=u.dtype, denied=u.denied) for u in s.llms],
        pools=[pb.PoolStats(head_dim=p.head_dim, dtype=p.dtype, capacity_blocks=p.capacity_blocks,
                            free_blocks=p.free_blocks) for p in s.pools])


def stats_from_proto(m: pb.StatsResponse) -> Stats:
    return Stats(m.capacity_blocks, m.free_blocks,
                 [LLMUsage(u.name, u.used_blocks, u.quota_blocks, u.head_dim, u.dtype, u.denied) for u in m.llms],
                 [PoolStats(p.head_dim, p.dtype, p.capacity_blocks, p.free_blocks) for p in m.pools],
                 m.sessions, m.expired_sessions, m.unit_id)
