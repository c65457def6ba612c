"""Pool layout helpers, LocalBlockSource, and the runner's input errors."""

from __future__ import annotations

import json

import pytest
import torch

import services.worker.engine.model as model

from services.worker.engine.loader import UnsupportedModelError, load_weights, read_spec
from services.worker.engine.pool import (
    LocalBlockSource,
    allocate_pool,
    blocks_for_tokens,
    blocks_per_token_block,
    pool_shape,
    table_index,
)
from services.worker.engine.types import InvalidRequestError, SamplingParams, SeqStep, StepInput
from tests.engine_model.helpers import Driver


def test_layout_helpers():
    assert pool_shape(10, 4, 16) == (10, 2, 4, 16)
    assert blocks_per_token_block(3, 2) == 6
    assert blocks_for_tokens(0, 4, 3, 2) == 0
    assert blocks_for_tokens(1, 4, 3, 2) == 6 and blocks_for_tokens(9, 4, 3, 2) == 18
    assert table_index(2, 1, 1, num_layers=3, num_kv_heads=2) == (2 * 3 + 1) * 2 + 1
    pool = allocate_pool(8, 4, 16, torch.float32, shared=True)
    assert pool.shape == (8, 2, 4, 16) and pool.is_shared() and not pool.any()


def test_block_source_acquire_release_integrity():
    src = LocalBlockSource(10, first=100)
    a = src.acquire(4)
    assert len(a) == 4 and all(100 <= i < 110 for i in a)
    assert src.acquire(7) is None and src.num_free == 6  # nothing taken on failure
    b = src.acquire(6)
    assert set(a).isdisjoint(b) and src.num_free == 0
    src.check_integrity()
    src.release(a)
    assert src.num_free == 4
    src.check_integrity()
    with pytest.raises(ValueError, match="not in use"):
        src.release([a[0]])  # double free
    with pytest.raises(ValueError, match="not from this source"):
        src.release([5])
    with pytest.raises(ValueError, match="twice"):
        src.release([b[0], b[0]])
    assert src.num_used == 6  # failed releases changed nothing
    src.release(b)
    src.check_integrity()
    assert sorted(src.acquire(10)) == list(range(100, 110))


def test_integrity_check_catches_corruption():
    src = LocalBlockSource(4)
    src.acquire(1)
    src._free.append(src._free[0])  # corrupt on purpose
    with pytest.raises(AssertionError):
        src.check_integrity()


def test_unsupported_architecture_is_named(tmp_path, checkpoints):
    """A checkpoint no path can run is refused at load, naming its architecture and why; a Llama option the fast
    path lacks (yarn RoPE) sends it to the generic path instead."""
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel.*not supported: config.json has none of"):
        load_weights(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(
        {"architectures": ["BartForCausalLM"], "model_type": "bart", "is_encoder_decoder": True}))
    with pytest.raises(UnsupportedModelError, match="BartForCausalLM.*encoder-decoder"):
        load_weights(tmp_path)
    cfg = json.loads((checkpoints["llama"] / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert read_spec(tmp_path).engine == "generic"
    assert read_spec(checkpoints["llama"]).engine == "fast"


def test_bad_steps_raise_invalid_request(checkpoints):
    d = Driver(checkpoints["llama"])
    sp = SamplingParams()

    def run(**kw):
        seq = dict(seq_id=7, token_ids=[1, 2, 3], start_pos=0, block_table=list(range(4)), sampling=sp)
        d.runner.execute(StepInput("x", [SeqStep(**{**seq, **kw})]))

    with pytest.raises(InvalidRequestError, match="seq 7: block table has 2 ids, needs 4"):
        run(block_table=[0, 1])
    with pytest.raises(InvalidRequestError, match="out of range"):
        run(block_table=[0, 1, 2, 10**6])
    with pytest.raises(InvalidRequestError, match="outside vocab"):
        run(token_ids=[1, 10**6])
    with pytest.raises(InvalidRequestError, match="positions"):
        run(start_pos=d.spec.max_model_len)
    run()  # the runner still works afterwards


@pytest.mark.parametrize("fused", [True, False])
def test_bad_decode_steps_raise_invalid_request_and_write_nothing(checkpoints, fused, monkeypatch):
    """Decode-only steps (the fused native path where it runs, and the torch path): a bad block table names
    its sequence, and no K/V of the step reaches the pool."""
    monkeypatch.setattr(model, "FUSED", fused)
    d = Driver(checkpoints["llama"])
    L, H = d.spec.num_layers, d.spec.num_kv_heads
    need = 2 * L * H  # position 5, block size 4: token blocks 0 and 1
    sp = SamplingParams()

    def run(bad_table):
        ok = SeqStep(7, [3], 5, list(range(need)), sp)
        d.runner.execute(StepInput("x", [ok, SeqStep(8, [4], 5, bad_table, sp)]))

    before = d.pool.clone()
    with pytest.raises(InvalidRequestError, match=f"seq 8: block table has {need - 1} ids, needs {need}"):
        run(list(range(need - 1)))
    for bad in (10**6, -1, 2**40):
        with pytest.raises(InvalidRequestError, match="seq 8: block id out of range"):
            run(list(range(need - 1)) + [bad])
    assert torch.equal(d.pool, before)
    run(list(range(need, 2 * need)))  # the runner still works afterwards
    assert not torch.equal(d.pool, before)


@pytest.mark.parametrize("fused", [True, False])
def test_block_tables_as_lists_or_int32_arrays_give_the_same_step(checkpoints, fused, monkeypatch):
    """The engine ships array("i") tables (one buffer to copy and pickle); callers may pass lists."""
    from array import array

    monkeypatch.setattr(model, "FUSED", fused)
    out = []
    for as_array in (False, True):
        d = Driver(checkpoints["qwen2"], seed=9)
        d.add(0, list(range(20, 33)))
        d.add(1, [7, 8, 9])
        if as_array:
            for s in d.seqs.values():
                s.table = array("i", s.table)
        out.append([d.step({0: 13, 1: 3}).logits] + [d.step({0: 1, 1: 1}).logits for _ in range(3)])
    for a, b in zip(*out):
        assert torch.equal(a, b)


def test_decode_steps_group_coarser_than_prefill_steps():
    """Contexts 40 and 100 (ratio 2.5): one group in a decode step, two when the step holds prefill chunks."""
    from services.worker.engine.attention import build_context

    L, H, bs = 2, 1, 4
    tables = [list(range(0, 26 * L * H)), list(range(100, 100 + 26 * L * H))]

    def groups(lens):  # lens: tokens this step per sequence; contexts end at 40 and 100
        seqs = [(end - n, n, t) for end, n, t in zip((40, 100), lens, tables)]
        return [g.num_seqs for g in build_context(seqs, L, H, bs, num_blocks=1000, head_dim=8).groups]

    assert groups([1, 1]) == [2]
    assert groups([8, 1]) == [1, 1]
    far = [(0, 1, list(range(L * H))), (999, 1, list(range(250 * L * H)))]  # contexts 1 and 1000
    assert [g.num_seqs for g in build_context(far, L, H, bs, num_blocks=1000, head_dim=8).groups] == [1, 1]
