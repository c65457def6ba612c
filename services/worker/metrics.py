"""A worker's Prometheus metrics: its engine's state, read at scrape time (nothing in the step loop).

vLLM's names under the `muxserve:` prefix with its `model_name` label: `num_requests_running`,
`num_requests_waiting`, `kv_cache_usage_perc` (the LLM's used blocks over the unit pool's capacity, a
fraction 0-1 as in vLLM; the sum over a unit's LLMs is the pool's use) and `num_preemptions_total`
(per unit: the engine counts preemptions unit-wide). Only this system has: `kv_quota_blocks` and
`kv_used_blocks` (head-wise blocks per LLM), `kv_pool_blocks`, `adbs_quota_moves_total` (quota changes
from memmgr's ADBS), `lease_waits_total` (block acquisitions that found the local lease list short),
`placement_version`, and per job (`job` = prefill | decode) `job_busy_seconds_total` (rate() of it
is the busy fraction), `job_dispatches_total` (busy seconds over dispatches: the mean dispatch) and
`job_compute_share`. Request counts and latencies are the router's
(services/router/metrics.py). Served on its own port (worker.metrics_port, default gRPC port + 1000).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger(__name__)

JOBS = ("prefill", "decode")


def _gauge(name: str, doc: str, labels=("model_name",)) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"muxserve:{name}", doc, labels=list(labels))


class WorkerCollector:
    """Yields the worker's series from `worker` (services.worker.server.Worker) at each scrape."""

    def __init__(self, worker):
        self.worker = worker

    def collect(self):
        version = _gauge("placement_version", "Placement version this worker follows.", ())
        version.add_metric([], float(self.worker.assignment.version))
        yield version
        aeng = self.worker.engine
        if aeng is None:
            return
        yield from self._engine(aeng.engine)
        yield from self._leases()

    def _engine(self, eng):
        stats = eng.stats()
        capacity = max(stats["pool"]["capacity"], 1)
        fams = {k: _gauge(*v) for k, v in {
            "running": ("num_requests_running", "Requests in the engine's running set."),
            "waiting": ("num_requests_waiting", "Requests waiting to be scheduled."),
            "usage": ("kv_cache_usage_perc", "The LLM's KV blocks in use over the pool's capacity (0-1)."),
            "quota": ("kv_quota_blocks", "The LLM's KV quota in head-wise blocks."),
            "used": ("kv_used_blocks", "Head-wise KV blocks the LLM holds.")}.items()}
        for name, s in stats["llms"].items():
            for key, value in (("running", s["running"]), ("waiting", s["waiting"]),
                               ("usage", s["used_blocks"] / capacity), ("quota", s["quota"]),
                               ("used", s["used_blocks"])):
                fams[key].add_metric([name], float(value))
        yield from fams.values()
        pool = _gauge("kv_pool_blocks", "Head-wise blocks of the unit's pool.", ())
        pool.add_metric([], float(stats["pool"]["capacity"]))
        preempt = CounterMetricFamily("muxserve:num_preemptions", "Preemptions in this unit.", labels=[])
        preempt.add_metric([], float(stats["preemptions"]))
        yield from (pool, preempt)
        yield from self._jobs(eng, list(stats["llms"]))

    def _jobs(self, eng, names):
        busy = CounterMetricFamily("muxserve:job_busy_seconds", "Seconds the job had a batch in flight.",
                                   labels=["model_name", "job"])
        runs = CounterMetricFamily("muxserve:job_dispatches", "Dispatches (batches) the job ran.",
                                   labels=["model_name", "job"])
        share = _gauge("job_compute_share", "The job's compute share of the unit (0-1).", ("model_name", "job"))
        for name in names:
            for kind in JOBS:
                busy.add_metric([name, kind], eng.busy_s.get((name, kind), 0.0))
                runs.add_metric([name, kind], float(eng.dispatches.get((name, kind), 0)))
                share.add_metric([name, kind], float(eng.budget.share(name, kind)))
        yield from (busy, runs, share)

    def _leases(self):
        kv = self.worker.kv
        moves = CounterMetricFamily("muxserve:adbs_quota_moves", "Quota changes applied from memmgr's ADBS.",
                                    labels=["model_name"])
        waits = CounterMetricFamily("muxserve:lease_waits", "Block acquisitions that waited for a lease refill.",
                                    labels=["model_name"])
        for name in self.worker.engine.engine.llms:
            moves.add_metric([name], float(getattr(kv, "quota_moves", {}).get(name, 0)))
            sources = getattr(kv, "sources", None)
            src = sources.get(name) if sources is not None else None
            waits.add_metric([name], float(getattr(src, "waits", 0)))
        yield from (moves, waits)


def serve_metrics(worker, host: str, port: int):
    """Serve /metrics for `worker` on host:port (0: any) in a thread; returns the HTTP server (its
    `server_address[1]` is the port; `shutdown()` stops it), or None when it cannot bind (logged: a
    worker without metrics still serves requests)."""
    registry = CollectorRegistry()
    registry.register(WorkerCollector(worker))
    try:
        server, _ = start_http_server(port, host, registry=registry)
    except OSError as exc:
        log.warning("worker metrics: cannot listen on %s:%d (%s); no /metrics on this worker", host, port, exc)
        return None
    log.info("worker metrics on http://%s:%d/metrics", host, server.server_address[1])
    return server
