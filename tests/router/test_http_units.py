"""The HTTP front's pieces without a mesh: OpenAI bodies -> RouteRequests (n, seeds, defaults, refusals),
the gRPC -> HTTP error mapping, API keys, request bounds, and config validation of the new keys."""

from __future__ import annotations

import grpc
import pytest

from muxserve import config as mesh_config
from muxserve.config import ConfigError
from services.router.auth import ApiKeys
from services.router.config import ModelLimits, RequestBounds, from_mesh
from services.router.openai_api.errors import from_router_error
from services.router.openai_api.protocol import ChatCompletionRequest, CompletionRequest
from services.router.request import InvalidArgument, ModelNotFound, ResourceExhausted, RouteRequest, Unavailable
from services.router.validation import validate
from services.worker.engine.types import SamplingParams

MODELS = {"m": ModelLimits("m", 1024, 384)}


def test_completion_n_prompts_seeds_and_defaults():
    body = CompletionRequest(model="m", prompt=["a", "b"], n=3, seed=5, top_k=-1, stop="x")
    groups = body.route_requests("rid")
    assert [[r.prompt for r in g] for g in groups] == [["a"] * 3, ["b"] * 3]
    assert [r.sampling.seed for r in groups[0]] == [5, 6, 7]
    s = groups[0][0].sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.stop) == (16, 1.0, 1.0, 0, ("x",))
    assert groups[1][2].request_id == "rid-1-2" and groups[0][0].add_special_tokens is True
    ids = CompletionRequest(model="m", prompt=[1, 2, 3]).route_requests("r")[0][0]
    assert (ids.prompt, ids.prompt_token_ids) == ("", [1, 2, 3])


@pytest.mark.parametrize("extra, param", [({"echo": True}, "echo"), ({"logprobs": 1}, "logprobs"),
                                          ({"presence_penalty": 0.5}, "presence_penalty"),
                                          ({"top_k": -5}, "top_k")])
def test_unsupported_completion_fields_are_400_naming_the_field(extra, param):
    with pytest.raises(InvalidArgument) as err:
        CompletionRequest(model="m", prompt="a", **extra).route_requests("r")
    assert err.value.param == param and from_router_error(err.value)[0] == 400


def test_chat_defaults_and_text_parts():
    body = ChatCompletionRequest(model="m", messages=[
        {"role": "user", "content": [{"type": "text", "text": "he"}, {"type": "text", "text": "llo"}]}])
    (req,), = body.route_requests("r", 1024)
    assert req.messages == [{"role": "user", "content": "hello"}]
    assert req.sampling.max_tokens == 256 and req.add_special_tokens is False
    (short,), = body.route_requests("r", 100)
    assert short.sampling.max_tokens == 50
    (capped,), = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}],
                                       max_completion_tokens=7).route_requests("r", 1024)
    assert capped.sampling.max_tokens == 7


def test_error_mapping():
    assert from_router_error(ModelNotFound("no"))[0] == 404
    assert from_router_error(ModelNotFound("no"))[1]["error"]["code"] == "model_not_found"
    assert from_router_error(ResourceExhausted("full"))[0] == 429
    assert from_router_error(Unavailable("down"))[0] == 503
    status, body = from_router_error(InvalidArgument("bad", param="top_p"))
    assert status == 400 and body == {"error": {"message": "bad", "type": "invalid_request_error",
                                                "param": "top_p", "code": "invalid_argument"}}
    from services.router.request import RouterError
    assert from_router_error(RouterError("boom", grpc.StatusCode.INTERNAL))[0] == 500


def test_api_keys():
    assert ApiKeys().allows(None) and ApiKeys().open
    keys = ApiKeys(["k1", "k2"])
    assert keys.allows("Bearer k2") and keys.allows("bearer k1")
    assert not any(keys.allows(h) for h in (None, "", "k1", "Bearer", "Bearer k3", "Basic k1"))


def test_bounds_on_stop_strings_and_request_ids():
    bounds = RequestBounds(max_stop_strings=2, max_stop_chars=3, max_request_id_chars=4)
    ok = RouteRequest("m", prompt="x", sampling=SamplingParams(max_tokens=2, stop=("a", "bcd")), request_id="abcd")
    validate(ok, MODELS, bounds)
    for bad in (RouteRequest("m", prompt="x", sampling=SamplingParams(max_tokens=2, stop=("a", "b", "c"))),
                RouteRequest("m", prompt="x", sampling=SamplingParams(max_tokens=2, stop=("abcd",))),
                RouteRequest("m", prompt="x", sampling=SamplingParams(max_tokens=2), request_id="abcde")):
        with pytest.raises(InvalidArgument, match="router.max_"):
            validate(bad, MODELS, bounds)


def test_router_config_keys(tmp_path, monkeypatch):
    base = {"models": [{"name": "m", "path": str(tmp_path)}]}
    cfg = from_mesh(mesh_config.from_dict(base))
    assert (cfg.http_port, cfg.api_keys, cfg.max_message_bytes) == (8000, (), 4 << 20)
    monkeypatch.setenv("MUXSERVE_API_KEY", "env-key")
    cfg = from_mesh(mesh_config.from_dict({**base, "router": {"api_keys": ["a"], "http_port": 0}}))
    assert (cfg.api_keys, cfg.http_port) == (("a", "env-key"), 0)
    for bad in ({"api_keys": "a"}, {"http_port": -2}, {"max_message_bytes": 0}, {"max_stop_strings": 0}):
        with pytest.raises(ConfigError):
            from_mesh(mesh_config.from_dict({**base, "router": bad}))
