"""BlockAllocator and the quota functions: pure logic, no device, no server."""

import pytest

from services.memmgr.allocator import BlockAllocator
from services.memmgr.quotas import QuotaPolicy, adapt, initial_quotas, split
from services.memmgr.types import InvalidArgumentError, Owner

A, B = Owner("a", "s1"), Owner("b", "s1")


def test_allocate_is_all_or_nothing():
    al = BlockAllocator(10)
    ids = al.allocate(7, A)
    assert len(ids) == 7 and len(set(ids)) == 7
    assert al.allocate(4, B) is None and al.num_free == 3 and al.held_by(B) == 0
    assert sorted(ids + al.allocate(3, B)) == list(range(10))
    assert al.allocate(1, A) is None
    al.check()


def test_bad_free_changes_nothing():
    al = BlockAllocator(8)
    a, b = al.allocate(3, A), al.allocate(2, B)
    for bad, msg in [([a[0], b[0]], "owned by LLM 'b'"), ([a[0], a[0]], "more than once"),
                     ([99], "out of range"), ([a[0], 7], "not leased")]:
        with pytest.raises(InvalidArgumentError, match=msg):
            al.free(bad, A)
        assert al.held_by(A) == 3 and al.held_by(B) == 2 and al.num_free == 3
        al.check()
    al.free(a, A)
    with pytest.raises(InvalidArgumentError, match="not leased"):
        al.free(a[:1], A)  # double release
    assert al.num_free == 6
    assert sorted(al.free_all(B)) == sorted(b) and al.num_free == 8
    al.check()


def test_check_detects_corruption():
    al = BlockAllocator(4)
    al.allocate(2, A)
    al._free.append(al._free[0])  # a block on the free list twice
    with pytest.raises(AssertionError, match="twice"):
        al.check()
    al = BlockAllocator(4)
    ids = al.allocate(2, A)
    al._free.append(ids[0])       # leased and free at once
    with pytest.raises(AssertionError, match="both free and leased"):
        al.check()


def test_split_sums_exactly_and_follows_weights():
    q = split(100, {"a": 1.0, "b": 1.0, "c": 1.0})
    assert sum(q.values()) == 100 and sorted(q.values()) == [33, 33, 34]
    assert split(10, {"a": 0.0, "b": 0.0}) == {"a": 5, "b": 5}
    q = initial_quotas(1000, {"hot": 3.0, "cold": 1.0}, {"hot": 4, "cold": 4})
    assert q == {"hot": 750, "cold": 250}
    q = initial_quotas(1000, {"big": 1.0, "small": 1.0}, {"big": 32, "small": 8})  # rate x blocks per token
    assert q == {"big": 800, "small": 200}


def test_adapt_moves_unused_quota_to_saturated():
    pol = QuotaPolicy(threshold=0.9, donate_fraction=0.5)
    quota, used = {"a": 100, "b": 100, "c": 100}, {"a": 20, "b": 100, "c": 95}
    new = adapt(quota, used, {"b"}, {"a": 1, "b": 1, "c": 1}, pol)
    assert new == {"a": 60, "b": 140, "c": 100}  # a donates half its 80 unused; c is above 90%
    assert sum(new.values()) == 300 and all(new[m] >= used[m] for m in new)
    assert adapt(quota, used, set(), {"a": 1, "b": 1, "c": 1}, pol) == quota  # nobody saturated
    new = adapt(quota, used, {"b", "c"}, {"a": 1, "b": 3, "c": 1}, pol)
    assert new == {"a": 60, "b": 130, "c": 110} and sum(new.values()) == 300
