"""ADBS scheduler and block manager logic, driven without a model (tokens are made up)."""

from __future__ import annotations

import pytest

from services.worker.engine.block_manager import BlockManager
from services.worker.engine.pool import LocalBlockSource
from services.worker.engine.scheduler import Scheduler
from services.worker.engine.sequence import Sequence, SeqStatus
from services.worker.engine.types import SamplingParams

BS = 4  # tokens per block


def unit(capacity: int, llms=(("a", 2, 2),), budget: int = 64, max_seqs: int = 64) -> Scheduler:
    bm = BlockManager(LocalBlockSource(capacity), capacity, BS)
    sched = Scheduler(bm, max_seqs, budget)
    for name, layers, heads in llms:
        bm.add_llm(name, layers, heads)
        sched.add_llm(name)
    return sched


def seq(i: int, llm: str = "a", n_prompt: int = 8, max_tokens: int = 4) -> Sequence:
    return Sequence(i, f"r{i}", llm, list(range(3, 3 + n_prompt)), SamplingParams(max_tokens=max_tokens),
                    arrival=float(i))


def run_round(sched: Scheduler) -> list:
    """One round; every sequence that reaches its end samples token 7; finish at max_tokens."""
    ds = sched.schedule()
    for d in ds:
        for s in sched.complete(d, [7] * len(d.plan)):
            if s.num_output_tokens >= s.sampling.max_tokens:
                sched.finish(s, "length")
    sched.blocks.check_integrity(sched.all_seqs())
    return ds


def test_prefill_batches_prompts_of_different_lengths_within_budget():
    sched = unit(1000, budget=20)
    seqs = [seq(i, n_prompt=n) for i, n in enumerate((5, 9, 4, 30))]
    for s in seqs:
        sched.add(s)
    (d,) = sched.schedule()
    assert d.kind == "prefill" and list(d.plan.values()) == [5, 9, 4, 2]  # FCFS; the last one chunked
    assert seqs[3].block_table and len(seqs[3].block_table) == 1 * 2 * 2  # 2 tokens -> 1 token block


def test_a_prompt_cut_by_the_token_budget_does_not_hold_decode_back():
    # event-driven: the prefill job takes the next 8 tokens when it is free again; decode runs meanwhile
    sched = unit(1000, budget=8)
    for i in range(3):
        sched.add(seq(i, n_prompt=8))
    kinds = [sorted(d.kind for d in run_round(sched)) for _ in range(3)]
    assert kinds == [["prefill"], ["decode", "prefill"], ["decode", "prefill"]]
    (d,) = sched.schedule()
    assert len(d.plan) == 3 and set(d.plan.values()) == {1}, "all three decode in one step"


def test_prefill_of_one_llm_overlaps_decode_of_another():
    sched = unit(1000, llms=(("a", 2, 2), ("b", 1, 1)), budget=64)
    sched.add(seq(0, "a"))
    run_round(sched)  # a's prompt is in; it decodes from now on
    sched.add(seq(1, "b"))
    ds = sched.schedule()
    assert sorted((d.llm, d.kind) for d in ds) == [("a", "decode"), ("b", "prefill")]


def test_a_sequence_is_never_in_two_dispatches():
    sched = unit(1000)
    for i in range(4):
        sched.add(seq(i))
    first = sched.schedule()
    assert sched.schedule() == [], "everything is in flight"
    for d in first:
        sched.complete(d, [7] * len(d.plan))
    assert sched.schedule(), "back after completion"


def test_preemption_picks_the_youngest_and_everything_finishes():
    # each sequence needs up to ceil((8 + 12) / 4) = 5 token blocks x 4 = 20 blocks; the pool holds 48
    sched = unit(48)
    seqs = [seq(i, n_prompt=8, max_tokens=12) for i in range(4)]
    for s in seqs:
        sched.add(s)
    preempted_order, rounds = [], 0
    while sched.has_unfinished():
        before = {s for s in seqs if s.status is SeqStatus.RUNNING}
        run_round(sched)
        preempted_order += [s.seq_id for s in before if s.status is SeqStatus.PREEMPTED]
        rounds += 1
        assert rounds < 500, "deadlock"
    assert sched.num_preemptions > 0 and all(s.finish_reason == "length" for s in seqs)
    assert preempted_order[0] == 3, f"the youngest goes first, got {preempted_order}"
    assert sched.blocks.num_free == 48


def test_a_lone_sequence_that_can_never_fit_finishes_with_an_error():
    sched = unit(8)  # 2 token blocks of 4 tokens at most
    s = seq(0, n_prompt=6, max_tokens=10)
    sched.add(s)
    for _ in range(20):
        if not sched.has_unfinished():
            break
        run_round(sched)
    assert s.finish_reason == "error" and "does not fit" in str(s.error)
    assert sched.blocks.num_free == 8


def test_quotas_split_by_rate_times_blocks_per_token_and_lone_sequences_pass():
    sched = unit(1200, llms=(("a", 2, 2), ("b", 4, 2)))
    q = sched.blocks.proportional_quotas({"a": 2.0, "b": 1.0})  # weights 2*4=8 vs 1*8=8
    assert q == {"a": 600, "b": 600}
    sched.blocks.set_quotas({"a": 8, "b": 600})
    s0, s1 = seq(0, n_prompt=16), seq(1, n_prompt=16)  # 16 tokens = 4 token blocks = 16 blocks each
    sched.add(s0)
    sched.add(s1)
    (d,) = sched.schedule()
    assert list(d.plan) == [s0], "alone, a sequence may pass its LLM's quota; a second may not"
    with pytest.raises(ValueError):
        sched.blocks.set_quotas({"a": -1})


def test_abort_in_flight_returns_blocks_when_the_dispatch_returns():
    sched = unit(100)
    s = seq(0)
    sched.add(s)
    (d,) = sched.schedule()
    sched.abort(s)
    assert s.finish_reason == "abort" and s.block_table, "blocks stay while the job may write them"
    sched.complete(d, [7])
    assert not s.block_table and sched.blocks.num_free == 100 and not sched.has_unfinished()
