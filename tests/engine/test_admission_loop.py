"""The scheduler's event-driven admission (compute shares, prefill priority), wait-for-cache and the
temporal mode, driven without a model: dispatches complete in whatever order the test chooses."""

from __future__ import annotations

import pytest

from services.worker.engine.block_manager import BlockManager
from services.worker.engine.compute import ComputeBudget
from services.worker.engine.pool import LocalBlockSource
from services.worker.engine.scheduler import Scheduler
from services.worker.engine.sequence import Sequence
from services.worker.engine.types import SamplingParams

BS = 4


def unit(capacity: int = 1000, llms=("a", "b"), mode: str = "spatial-temporal", budget: int = 64) -> Scheduler:
    bm = BlockManager(LocalBlockSource(capacity), capacity, BS)
    sched = Scheduler(bm, 64, budget, mode)
    for name in llms:
        bm.add_llm(name, 1, 1)
        sched.add_llm(name)
    return sched


def seq(i: int, llm: str, n_prompt: int = 8, max_tokens: int = 50, arrival: float | None = None) -> Sequence:
    return Sequence(i, f"r{i}", llm, list(range(3, 3 + n_prompt)), SamplingParams(max_tokens=max_tokens),
                    arrival=float(i) if arrival is None else arrival)


def complete(sched: Scheduler, budget: ComputeBudget, d) -> None:
    budget.give(d.llm, d.kind)
    for s in sched.complete(d, [7] * len(d.plan)):
        if s.num_output_tokens >= s.sampling.max_tokens:
            sched.finish(s, "length")


def test_admission_never_exceeds_compute_plus_allowance():
    shares = {"a/prefill": 0.6, "a/decode": 0.5, "b/prefill": 0.6, "b/decode": 0.4}
    budget = ComputeBudget(shares, allowance=0.2)
    sched = unit()
    for i in range(6):
        sched.add(seq(i, "ab"[i % 2]))
    inflight, seen = [], set()
    for _ in range(40):
        inflight += sched.schedule(budget.busy, budget)
        assert budget.used <= 1.2 + 1e-9, (budget.used, [(d.llm, d.kind) for d in inflight])
        seen.add(frozenset((d.llm, d.kind) for d in inflight))
        complete(sched, budget, inflight.pop(0))  # oldest returns first
    assert max(len(s) for s in seen) >= 2, "jobs overlap when their shares fit"
    assert all(sum(shares[f"{l}/{k}"] for l, k in s) <= 1.2 + 1e-9 for s in seen)


def test_decode_of_one_llm_runs_many_steps_beside_a_long_prefill():
    budget = ComputeBudget({"a/prefill": 0.5, "a/decode": 0.5, "b/prefill": 0.5, "b/decode": 0.5})
    sched = unit()
    sched.add(seq(0, "a"))
    (pa,) = sched.schedule(budget.busy, budget)
    complete(sched, budget, pa)  # a decodes from now on
    sched.add(seq(1, "b", n_prompt=60))
    ds = sched.schedule(budget.busy, budget)
    long_prefill = next(d for d in ds if d.kind == "prefill")
    assert long_prefill.llm == "b"
    steps = 0
    for _ in range(5):  # b's prefill stays in flight; a's decode returns and is dispatched again
        (dec,) = [d for d in ds if d.kind == "decode"]
        complete(sched, budget, dec)
        steps += 1
        ds = sched.schedule(budget.busy, budget)
        assert [(d.llm, d.kind) for d in ds] == [("a", "decode")]
    assert steps == 5 and long_prefill.plan and all(s.in_flight for s in long_prefill.plan)


def test_decode_held_only_while_a_prefill_waits_for_admission():
    budget = ComputeBudget({"a/prefill": 1.0, "a/decode": 0.2, "b/prefill": 1.0, "b/decode": 0.2})
    sched = unit()
    sched.add(seq(0, "a"))
    (pa,) = sched.schedule(budget.busy, budget)
    complete(sched, budget, pa)
    (da,) = sched.schedule(budget.busy, budget)  # a decode in flight (0.2)
    sched.add(seq(1, "b"))
    (pb,) = sched.schedule(budget.busy, budget)  # 0.2 + 1.0 <= 1.2: admitted
    assert (pb.llm, pb.kind) == ("b", "prefill")
    complete(sched, budget, da)
    sched.add(seq(2, "a"))  # a's prefill (1.0) does not fit beside b's (1.0): it waits, decode is held
    assert sched.schedule(budget.busy, budget) == []
    complete(sched, budget, pb)
    ds = sched.schedule(budget.busy, budget)
    # the waiting prefill goes in first; of the decodes, only one fits beside it (1.0 + 0.2)
    assert ds[0].kind == "prefill" and ds[0].llm == "a" and [d.kind for d in ds[1:]] == ["decode"]
    for d in ds:
        complete(sched, budget, d)
    kinds = sorted((d.llm, d.kind) for d in sched.schedule(budget.busy, budget))
    assert kinds == [("a", "decode"), ("b", "decode")], "no prefill pending: both decode"


def test_wait_for_cache_after_preemption():
    # 1 layer x 1 head: one head-wise block per 4 tokens; 6 blocks in the pool
    sched = unit(capacity=6, llms=("a",))
    budget = ComputeBudget()
    s0, s1 = seq(0, "a", n_prompt=8, max_tokens=12), seq(1, "a", n_prompt=8, max_tokens=12)
    sched.add(s0)
    sched.add(s1)
    for _ in range(12):
        for d in sched.schedule(budget.busy, budget):
            complete(sched, budget, d)
        if sched.num_preemptions:
            break
    assert sched.num_preemptions == 1
    victim = s1 if s1 in sched.waiting["a"] else s0
    assert "a" in sched.wait_for_cache and not sched.prefill_pending("a")
    survivor = s0 if victim is s1 else s1
    while not survivor.is_finished:
        ds = sched.schedule(budget.busy, budget)
        assert all(d.kind == "decode" for d in ds), "no re-prefill while the survivor runs"
        for d in ds:
            complete(sched, budget, d)
        if survivor.num_output_tokens >= survivor.sampling.max_tokens and not survivor.is_finished:
            sched.finish(survivor, "length")
    assert "a" not in sched.wait_for_cache
    (d,) = sched.schedule(budget.busy, budget)
    assert d.kind == "prefill" and victim in d.plan


def test_temporal_runs_one_dispatch_at_a_time_fcfs_across_llms():
    sched = unit(mode="temporal")
    budget = ComputeBudget()
    sched.add(seq(0, "b", max_tokens=2, arrival=0.0))
    sched.add(seq(1, "a", max_tokens=2, arrival=1.0))
    sched.add(seq(2, "b", max_tokens=2, arrival=2.0))
    order = []
    while sched.has_unfinished():
        ds = sched.schedule(budget.busy, budget)
        assert len(ds) == 1, "one dispatch at a time"
        assert sched.schedule(budget.busy, budget) == [], "nothing else while it is in flight"
        order.append((ds[0].llm, ds[0].kind, sorted(s.seq_id for s in ds[0].plan)))
        complete(sched, budget, ds[0])
    # b holds the oldest request: its two prompts, then its decode until r0 finishes; then a (r1) is
    # the oldest; b's r2 waits behind it
    assert order[0] == ("b", "prefill", [0, 2])
    assert order[1] == ("b", "decode", [0, 2])
    assert order[2] == ("a", "prefill", [1])
    assert order[3] == ("a", "decode", [1])


def test_bad_shares_and_modes_are_refused():
    with pytest.raises(ValueError, match="a/decode"):
        ComputeBudget({"a/decode": 1.5})
    with pytest.raises(ValueError, match="mode"):
        unit(mode="lockstep")


def test_cpu_cores_run_one_dispatch_each_and_free_cores_are_spread():
    budget = ComputeBudget({"a/prefill": 1.0, "a/decode": 0.5, "b/prefill": 0.5, "b/decode": 0.05}, cores=[4, 5])
    budget.home = {"b/decode": [5]}
    assert budget.wanted_cores("a", "prefill") == 1, "shared by two LLMs: no job waits for the whole unit"
    assert budget.wanted_cores("b", "decode") == 1
    budget.take("b", "decode")
    assert budget.cores_of("b", "decode") == [5], "its home core"
    budget.take("a", "decode")
    assert budget.cores_of("a", "decode") == [4] and budget.free_cores() == []
    assert not budget.fits("a", "prefill") and not budget.fits("b", "prefill"), "a core runs one dispatch at a time"
    budget.give("b", "decode")
    budget.give("a", "decode")
    budget.take("b", "decode")
    budget.spread([("b", "decode")])
    assert budget.cores_of("b", "decode") == [4, 5], "alone in the unit: it gets every free core"


def test_cores_replace_the_share_rule_and_one_llm_may_want_every_core():
    alone = ComputeBudget({"a/prefill": 1.0, "a/decode": 0.5}, cores=[0, 1])
    assert alone.wanted_cores("a", "prefill") == 2, "one LLM: its share's cores"
    assert ComputeBudget({"a/prefill": 1.0, "b/decode": 0.5}, cores=[0, 1], spread=False).wanted_cores(
        "a", "prefill") == 2, "without spreading a share is exact"
    shared = ComputeBudget({"a/prefill": 0.95, "b/prefill": 0.95}, cores=[0, 1])
    shared.take("a", "prefill")
    assert shared.fits("b", "prefill"), "a free core admits a job whatever the shares add up to"
    shared.take("b", "prefill")
    assert shared.free_cores() == [] and not shared.fits("a", "decode")


def test_scheduler_spreads_free_cores_over_what_it_planned():
    budget = ComputeBudget({"a/prefill": 0.5, "a/decode": 0.5, "b/prefill": 0.5, "b/decode": 0.5}, cores=[0, 1])
    sched = unit()
    sched.add(seq(0, "a"))
    (d,) = sched.schedule(budget.busy, budget)
    assert budget.cores_of("a", "prefill") == [0, 1], "nothing else to run: both cores"
    complete(sched, budget, d)
    sched.add(seq(1, "b"))
    ds = sched.schedule(budget.busy, budget)
    assert sorted((d.llm, d.kind) for d in ds) == [("a", "decode"), ("b", "prefill")]
    assert sorted(budget.cores_of("a", "decode") + budget.cores_of("b", "prefill")) == [0, 1], "disjoint"


def test_without_spreading_a_dispatch_keeps_its_shares_cores():
    budget = ComputeBudget({"a/prefill": 0.5, "a/decode": 0.5}, cores=[0, 1], spread=False)
    sched = unit()
    sched.add(seq(0, "a"))
    (d,) = sched.schedule(budget.busy, budget)
    assert budget.cores_of("a", "prefill") == [0] and budget.free_cores() == [1], "the other core stays free"


def test_a_decode_waiting_for_cores_is_not_overtaken():
    # a's decode wants both cores (exact shares: no spreading), b's one; b must not keep the unit by
    # always fitting first
    budget = ComputeBudget({"a/prefill": 1.0, "a/decode": 1.0, "b/prefill": 1.0, "b/decode": 0.05}, cores=[0, 1],
                           spread=False)
    sched = unit()
    for i, name in enumerate("ab"):
        sched.add(seq(i, name))
        (d,) = sched.schedule(budget.busy, budget)
        complete(sched, budget, d)  # both prompts in: a and b decode from now on
    ran = []
    inflight = sched.schedule(budget.busy, budget)
    for _ in range(12):
        ran += [d.llm for d in inflight]
        for d in inflight:
            complete(sched, budget, d)
        inflight = sched.schedule(budget.busy, budget)
    assert ran.count("a") >= 5 and ran.count("b") >= 5, ran


def run_one_core(sched: Scheduler, steps: dict[str, float], passes: int) -> list[str]:
    """Two LLMs decoding on one core, each dispatch lasting steps[llm] on the scheduler's clock: the order run."""
    budget = ComputeBudget({"a/prefill": 1.0, "a/decode": 1.0, "b/prefill": 1.0, "b/decode": 1.0}, cores=[0])
    now = [0.0]
    sched.order.clock = lambda: now[0]
    for i, name in enumerate("ab"):
        sched.add(seq(i, name, max_tokens=1000))
        (d,) = sched.schedule(budget.busy, budget)
        complete(sched, budget, d)
    ran = []
    for _ in range(passes):
        (d,) = sched.schedule(budget.busy, budget)
        now[0] += steps[d.llm]
        complete(sched, budget, d)
        ran.append(d.llm)
    return ran


def test_decode_jobs_go_in_deadline_order_and_none_starves():
    steps = {"a": 0.020, "b": 0.002}  # a's steps last 10x b's
    bm = BlockManager(LocalBlockSource(1000), 1000, BS)
    sched = Scheduler(bm, 64, 64, deadline_scale=3)
    for name in "ab":
        bm.add_llm(name, 1, 1)
        sched.add_llm(name)
    ran = "".join(run_one_core(sched, steps, 150))
    runs = [len(r) for r in ran.split("a")[1:-1]]  # b's steps between two of a's
    # b goes while its deadline (return + 3 x 2 ms) comes before a's (return + 3 x 20 ms): a waits ~54 ms
    assert len(runs) >= 3 and all(20 <= n <= 30 for n in runs), ran
    alternate = "".join(run_one_core(unit(), steps, 20))
    assert alternate in ("ab" * 10, "ba" * 10), "deadline_scale 0: least recently dispatched first"
