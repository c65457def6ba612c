"""Protobuf <-> engine dataclasses for the worker servicer (the only place the worker sees *_pb2)."""

from __future__ import annotations

from muxserve.v1 import router_pb2, worker_pb2
from services.worker.engine.types import Chunk, SamplingParams


def sampling_from_proto(p: router_pb2.SamplingParams) -> SamplingParams:
    """Wire defaults: top_p 0 means unset (1.0); top_k 0 means off; seed only when present."""
    return SamplingParams(
        max_tokens=int(p.max_tokens), temperature=float(p.temperature),
        top_p=float(p.top_p) if p.top_p != 0 else 1.0, top_k=int(p.top_k),
        seed=int(p.seed) if p.HasField("seed") else None, stop=tuple(p.stop), ignore_eos=bool(p.ignore_eos))


def prompt_from_proto(p: worker_pb2.WorkerGenerateRequest) -> str | list[dict] | None:
    """The text prompt, or the chat messages as [{"role", "content"}] (what the engine renders)."""
    if p.prompt:
        return p.prompt
    if p.messages:
        return [{"role": m.role, "content": m.content} for m in p.messages]
    return None


def chunk_to_proto(request_id: str, chunk: Chunk, final: bool = True) -> router_pb2.GenerateResponse:
    """final=False: only the chunk's tokens and text (a failed request's last tokens, before its status)."""
    resp = router_pb2.GenerateResponse(request_id=request_id, token_ids=chunk.token_ids, text=chunk.text,
                                       finish_reason=chunk.finish_reason if final else "")
    if chunk.finish_reason and final:
        resp.usage.prompt_tokens = chunk.prompt_tokens
        resp.usage.completion_tokens = chunk.completion_tokens
        if chunk.timing is not None:
            t = chunk.timing
            resp.usage.queue_time_s, resp.usage.time_to_first_token_s = t.queue_s, t.ttft_s
            resp.usage.time_per_output_token_s, resp.usage.e2e_latency_s = t.tpot_s, t.e2e_s
    return resp


def status_to_proto(worker_id: str, unit_id: str, version: int, stats: dict,
                    failed: dict[str, str] | None = None) -> worker_pb2.WorkerStatus:
    """stats: {llm_name: {"max_model_len", "running", "waiting", "draining"}} (AsyncUnitEngine.stats());
    failed: {llm_name: why it failed to load here}."""
    models = [worker_pb2.HostedModel(name=name, max_model_len=int(s.get("max_model_len", 0)),
                                     running=int(s.get("running", 0)), waiting=int(s.get("waiting", 0)),
                                     draining=bool(s.get("draining", False)))
              for name, s in sorted(stats.items())]
    return worker_pb2.WorkerStatus(worker_id=worker_id, unit_id=unit_id, models=models,
                                   placement_version=version, failed_models=failed or {})
