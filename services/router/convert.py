"""Protobuf <-> router dataclasses (with forward.py, the only router code that builds wire messages).

Wire defaults (router.proto): top_p 0 means unset (1.0); top_k 0 means off; max_tokens has no
default (0 is rejected by validation); seed only when present.
"""

from __future__ import annotations

from muxserve.v1 import router_pb2, worker_pb2
from services.router.config import ModelLimits
from services.router.request import RouteRequest
from services.worker.engine.types import SamplingParams


def sampling_from_proto(p: router_pb2.SamplingParams) -> SamplingParams:
    return SamplingParams(
        max_tokens=int(p.max_tokens), temperature=float(p.temperature),
        top_p=float(p.top_p) if p.top_p != 0 else 1.0, top_k=int(p.top_k),
        seed=int(p.seed) if p.HasField("seed") else None, stop=tuple(p.stop), ignore_eos=bool(p.ignore_eos))


def sampling_to_proto(s: SamplingParams) -> router_pb2.SamplingParams:
    p = router_pb2.SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p,
                                  top_k=s.top_k, stop=list(s.stop), ignore_eos=s.ignore_eos)
    if s.seed is not None:
        p.seed = s.seed
    return p


def request_from_proto(p: router_pb2.GenerateRequest) -> RouteRequest:
    which = p.WhichOneof("input")
    return RouteRequest(
        model=p.model, prompt=p.prompt if which == "prompt" else "",
        prompt_token_ids=list(p.prompt_token_ids.ids) if which == "prompt_token_ids" else [],
        messages=[{"role": m.role, "content": m.content} for m in p.messages.messages] if which == "messages" else [],
        add_special_tokens=p.add_special_tokens if p.HasField("add_special_tokens") else None,
        sampling=sampling_from_proto(p.sampling), request_id=p.request_id)


def worker_request(req: RouteRequest) -> worker_pb2.WorkerGenerateRequest:
    p = worker_pb2.WorkerGenerateRequest(
        request_id=req.request_id, model=req.model, prompt=req.prompt,
        prompt_token_ids=req.prompt_token_ids, sampling=sampling_to_proto(req.sampling),
        messages=[router_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in req.messages])
    if req.add_special_tokens is not None:
        p.add_special_tokens = req.add_special_tokens
    return p


def models_to_proto(models: dict[str, ModelLimits], units: dict[str, list[str]]) -> router_pb2.ListModelsResponse:
    return router_pb2.ListModelsResponse(models=[
        router_pb2.ModelInfo(name=name, max_model_len=lim.max_model_len, units=units.get(name, []))
        for name, lim in models.items()])
