"""The router's inter-token latency histogram counts k - 1 intervals per request of k tokens, however the
worker merged them into chunks."""

from prometheus_client import CollectorRegistry

from services.router.metrics import RouterMetrics


def _itl(reg: CollectorRegistry, what: str) -> float:
    return reg.get_sample_value(f"muxserve:inter_token_latency_seconds_{what}", {"model_name": "m"}) or 0.0


def test_merged_chunks_count_every_interval():
    reg = CollectorRegistry()
    m = RouterMetrics(reg)
    m.tokens("m", 2, None)  # the first chunk: the first token and one merged into it
    m.tokens("m", 3, 0.3)  # three more, 0.3 s after those
    m.tokens("m", 1, 0.1)
    assert _itl(reg, "count") == 1 + 3 + 1, "6 tokens, 5 intervals"
    assert abs(_itl(reg, "sum") - 0.4) < 1e-9
    m.tokens("m", 1, None)  # a one-token first chunk: no interval yet
    assert _itl(reg, "count") == 5
