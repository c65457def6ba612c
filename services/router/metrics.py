"""The router's Prometheus metrics: vLLM's request-level series under a `muxserve:` prefix.

Names and the `model_name` label follow vLLM's (vllm/v1/metrics/loggers.py), so its Grafana dashboards
work: `muxserve:prompt_tokens_total`, `muxserve:generation_tokens_total`,
`muxserve:request_success_total{finished_reason}`, histograms `muxserve:time_to_first_token_seconds`,
`muxserve:inter_token_latency_seconds`, `muxserve:e2e_request_latency_seconds`,
`muxserve:request_queue_time_seconds` (all timed at the router, as a client sees them). Only here:
`muxserve:request_failure_total{code}` (requests that ended with a gRPC status), the requests in flight
through this router, and the placement version it routes by. Engine state (running, waiting, KV usage,
preemptions, quotas, leases, job busy time and shares) is on each worker's /metrics
(services/worker/metrics.py). Each router owns its registry (several can run in one process in tests).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# vLLM's buckets (seconds)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
               20.0, 40.0, 80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                   120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r, m = self.registry, ["model_name"]
        self.prompt_tokens = Counter("muxserve:prompt_tokens", "Prefill tokens processed.", m, registry=r)
        self.generation_tokens = Counter("muxserve:generation_tokens", "Generation tokens processed.", m, registry=r)
        self.success = Counter("muxserve:request_success", "Finished requests by finish reason.",
                               [*m, "finished_reason"], registry=r)
        self.failure = Counter("muxserve:request_failure", "Requests that ended with a gRPC status (not OK).",
                               [*m, "code"], registry=r)
        self.ttft = Histogram("muxserve:time_to_first_token_seconds", "Time to first token.", m,
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("muxserve:inter_token_latency_seconds", "Time between output tokens.", m,
                             buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("muxserve:e2e_request_latency_seconds", "End-to-end request latency.", m,
                             buckets=REQUEST_BUCKETS, registry=r)
        self.queue = Histogram("muxserve:request_queue_time_seconds", "Time until first scheduled on a job.", m,
                               buckets=REQUEST_BUCKETS, registry=r)
        self.in_flight = Gauge("muxserve:router_requests_in_flight", "Requests streaming through this router.",
                               m, registry=r)
        self.placement_version = Gauge("muxserve:placement_version", "Placement version the router routes by.",
                                       registry=r)

    def finished(self, model: str, reason: str, prompt_tokens: int, completion_tokens: int,
                 queue_s: float, ttft_s: float, e2e_s: float) -> None:
        self.success.labels(model, reason).inc()
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.generation_tokens.labels(model).inc(completion_tokens)
        if completion_tokens:
            self.ttft.labels(model).observe(ttft_s)
        self.e2e.labels(model).observe(e2e_s)
        self.queue.labels(model).observe(queue_s)

    def tokens(self, model: str, n: int, gap_s: float | None) -> None:
        """n tokens arrived in one chunk gap_s after the previous ones: n inter-token intervals of gap_s / n;
        gap_s None: the request's first chunk, whose tokens after the first (merged into it) are 0 s apart.
        So a request of k tokens counts k - 1 intervals however its chunks were merged."""
        child = self.itl.labels(model)
        for _ in range(n if gap_s is not None else n - 1):
            child.observe(gap_s / n if gap_s is not None else 0.0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
