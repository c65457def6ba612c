"""bench/multiplex.py's simulator side: the same plans and request lists served on a virtual clock, with the
mesh terms calibrated on the measured run (the dispatch overhead on the alone runs, the host CPU per token on
the spatial mesh's lowest rate)."""

from __future__ import annotations

from dataclasses import replace


def host_cpu_per_token(spatial: dict) -> float:
    """CPU seconds per output token of every process but the jobs (router, worker, placer, memmgr, redis,
    client), in the spatial mesh's run at its lowest rate (below every policy's knee): the simulator's host
    term, calibrated once and used for every policy and rate. 0 when the run has no CPU accounting."""
    cpu = spatial.get("cpu_s") or {}
    if not cpu:
        return 0.0
    rate = min(cpu, key=float)
    tokens = sum(x["tokens"] for x in spatial["runs"][rate]) or 1
    return sum(v for k, v in cpu[rate].items() if k != "jobs") / tokens


def simulate_runs(r: dict, lists: dict, base: dict, models: list[str], host: float = 0.0) -> dict:
    """The simulator on the same plan and request lists. Its mesh terms: the overhead of a dispatch,
    calibrated on the alone runs (measured TPOT alone - the cost table's batch-1 decode step on that
    model's spatial unit, the smaller of the two models), and the host CPU per token (host_cpu_per_token,
    from spatial's lowest rate); never on the runs being compared."""
    from muxserve import config as mconfig
    from services.placer.cli import load_plan_inputs
    from services.placer.placement import Placement
    from services.placer.simulator import simulate, sim_llms
    from services.placer.simulator.cli import sim_config
    from services.memmgr.quotas import QuotaPolicy

    specs, _, _, pcfg, cost = load_plan_inputs(r["config"], None, None)
    placement = Placement.from_dict(r["plan"])
    over = min(max(base[m]["tpot"] - cost.decode_ms(m, 1, 1.0, 1, pcfg.avg_prompt_len) / 1000, 0.0) for m in models)
    head_block = 2 * 32 * 64 * 4  # bytes of one head-wise block (block_size 32, head_dim 64, fp32)
    cfg = replace(sim_config(mconfig.load(r["config"], serve=False), pcfg),  # the mesh's engine keys
                  device="cpu", num_blocks=r["num_blocks"], sim_block_bytes=head_block, dispatch_overhead_s=over,
                  host_cpu_s_per_token=host, quota=QuotaPolicy(adapt_interval_s=0))  # kv: local, no ADBS
    return {rate: simulate(placement, sim_llms(specs), reqs, cost, cfg) for rate, reqs in lists.items()} | {
        "dispatch_overhead_s": over, "host_cpu_s_per_token": host}


def add_simulated(raw: dict, lists: dict, args, models: list[str]) -> None:
    host = 0.0 if args.no_host_term else host_cpu_per_token(raw["spatial"])
    for r in raw.values():
        r["simulated"] = simulate_runs(r, lists, raw["spatial"]["base"], models, host)
