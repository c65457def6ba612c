"""MemoryManager: registration, quotas at lease time, release errors, session expiry, ADBS rounds."""

import pytest

from services.memmgr.manager import MemoryManager
from services.memmgr.quotas import QuotaPolicy
from services.memmgr.types import (ConflictError, ExhaustedError, InvalidArgumentError, LLMSpec, NotFoundError,
                                   PoolHandle, SessionExpiredError)

POOL = PoolHandle("shm", "test", 1000, 4, 16, "float32")
LLAMA = LLMSpec("llama", num_layers=2, num_kv_heads=2, head_dim=16, dtype="float32", rate=3.0)
QWEN = LLMSpec("qwen", num_layers=2, num_kv_heads=2, head_dim=16, dtype="float32", rate=1.0)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make(**kw):
    clock = Clock()
    m = MemoryManager([POOL], heartbeat_timeout_s=10.0, clock=clock, **kw)
    return m, clock, m.open_session("w0")


def test_register_returns_pool_and_splits_quota_by_rate():
    m, _, s = make()
    handle, q = m.register(s, LLAMA)
    assert handle == POOL and q == 1000
    m.register(s, QWEN)
    st = {u.name: u for u in m.stats().llms}
    assert st["llama"].quota_blocks == 750 and st["qwen"].quota_blocks == 250
    assert m.register(s, LLAMA) == (POOL, 750)  # idempotent


def test_register_errors_name_the_problem():
    m, _, s = make()
    with pytest.raises(InvalidArgumentError, match=r"no KV pool .*head_dim=128/float32.*head_dim=16/float32"):
        m.register(s, LLMSpec("big", 2, 2, 128, "float32"))
    with pytest.raises(InvalidArgumentError, match="no KV pool .*bfloat16"):
        m.register(s, LLMSpec("bf", 2, 2, 16, "bfloat16"))
    with pytest.raises(InvalidArgumentError, match="num_layers"):
        m.register(s, LLMSpec("x", 0, 2, 16, "float32"))
    with pytest.raises(InvalidArgumentError, match="dtype"):
        m.register(s, LLMSpec("x", 1, 2, 16, "int8"))
    with pytest.raises(NotFoundError, match="unknown session"):
        m.register("nope", LLAMA)
    m.register(s, LLAMA)
    m.lease(s, "llama", 4)
    with pytest.raises(ConflictError, match="another shape"):
        m.register(s, LLMSpec("llama", 4, 2, 16, "float32"))
    m.check()


def test_lease_enforces_quota_and_reports_usage():
    m, _, s = make()
    m.register(s, LLAMA)
    m.register(s, QWEN)
    m.lease(s, "qwen", 200)
    with pytest.raises(ExhaustedError, match=r"'qwen' over quota: used 200 \+ requested 51 > quota 250"):
        m.lease(s, "qwen", 51)
    assert len(m.lease(s, "qwen", 50)) == 50
    usage = {u.name: u for u in m.stats().llms}
    assert usage["qwen"].used_blocks == 250 and usage["qwen"].denied == 1
    m.set_quota("llama", 2000)
    m.lease(s, "llama", 750)
    with pytest.raises(ExhaustedError, match="pool head_dim=16/float32 has 0 free blocks"):
        m.lease(s, "llama", 1)
    with pytest.raises(NotFoundError, match="'ghost' is not registered"):
        m.lease(s, "ghost", 1)
    m.check()


def test_release_foreign_or_twice_changes_nothing():
    m, _, s = make()
    s2 = m.open_session("w1")
    m.register(s, LLAMA)
    m.register(s, QWEN)
    a, b = m.lease(s, "llama", 10), m.lease(s, "qwen", 10)
    c = m.lease(s2, "llama", 5)
    before = m.stats()
    with pytest.raises(InvalidArgumentError, match="owned by LLM 'qwen'"):
        m.release(s, "llama", a[:3] + b[:1])
    with pytest.raises(InvalidArgumentError, match="session"):
        m.release(s, "llama", c[:1])  # same LLM, another worker session
    m.release(s, "llama", a[:3])
    with pytest.raises(InvalidArgumentError, match="not leased"):
        m.release(s, "llama", a[:4])
    after = m.stats()
    assert after.free_blocks == before.free_blocks + 3
    m.check()


def test_silent_session_expires_and_loses_its_blocks():
    m, clock, s = make()
    live = m.open_session("w1")
    m.register(s, LLAMA)
    m.register(s, QWEN)
    m.lease(s, "llama", 100)
    kept = m.lease(live, "qwen", 30)
    clock.t = 8.0
    m.heartbeat(live)
    assert m.expire() == []
    clock.t = 10.5
    assert m.expire() == [s]
    st = m.stats()
    assert st.free_blocks == 970 and st.expired_sessions == 1 and st.sessions == 1
    with pytest.raises(SessionExpiredError, match="expired"):
        m.lease(s, "llama", 1)
    m.release(live, "qwen", kept)
    assert m.stats().free_blocks == 1000
    m.check()


def test_adapt_gives_unused_quota_to_the_llm_that_was_refused():
    m, _, s = make(policy=QuotaPolicy(threshold=0.9, donate_fraction=0.5))
    m.register(s, LLAMA)
    m.register(s, QWEN)  # llama 750, qwen 250
    m.lease(s, "qwen", 250)
    with pytest.raises(ExhaustedError):
        m.lease(s, "qwen", 10)
    m.lease(s, "llama", 50)
    assert m.adapt() == [("llama", 750, 400), ("qwen", 250, 600)]  # llama gives half of 700 unused
    assert len(m.lease(s, "qwen", 10)) == 10
    assert m.adapt() == []  # nobody refused since, nobody waiting
    m.heartbeat(s, {"qwen": 3})  # demand reported by the worker, qwen near its quota
    m.set_quota("qwen", 270)
    assert [c[0] for c in m.adapt()] == ["llama", "qwen"]
    m.check()
