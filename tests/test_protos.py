"""The committed generated code matches protos/ (regenerate: python -m muxserve.protogen)."""

import filecmp
from pathlib import Path

from muxserve import protogen


def test_generated_code_is_fresh(tmp_path: Path):
    protogen.generate(tmp_path)
    fresh = sorted((tmp_path / "muxserve" / "v1").glob("*_pb2*.py*"))
    assert fresh, "protoc generated nothing"
    committed = protogen.ROOT / "muxserve" / "v1"
    stale = [p.name for p in fresh if not filecmp.cmp(p, committed / p.name, shallow=False)]
    assert not stale, f"stale generated code (run python -m muxserve.protogen): {stale}"
    extra = {p.name for p in committed.glob("*_pb2*.py*")} - {p.name for p in fresh}
    assert not extra, f"generated files without a proto: {sorted(extra)}"


def test_public_api_names():
    from muxserve.v1 import router_pb2

    svc = router_pb2.DESCRIPTOR.services_by_name["Router"]
    assert svc.full_name == "muxserve.v1.Router"
    assert {m.name for m in svc.methods} >= {"Generate", "ListModels"}
    assert svc.methods_by_name["Generate"].server_streaming
    fields = set(router_pb2.SamplingParams.DESCRIPTOR.fields_by_name)
    assert fields >= {"max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos"}
