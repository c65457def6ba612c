"""Property tests (hypothesis): random interleavings keep the integrity check true and never hand one
block to two owners.

1. A stateful machine drives MemoryManager directly (open, register, lease, release, bad releases,
   crash + expiry, quota changes, ADBS rounds) against a shadow model of who holds what.
2. Many concurrent gRPC clients run random op lists against a real server (port 0): every grant is
   checked against the blocks every other client holds at that moment; crashed clients stop
   heartbeating and the server's expiry timer reclaims their blocks; at the end free == capacity.
"""

from __future__ import annotations

import asyncio
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, precondition, rule

from memmgr_testlib import start_memmgr
from services.memmgr.client import MemmgrClient
from services.memmgr.manager import MemoryManager
from services.memmgr.quotas import QuotaPolicy
from services.memmgr.types import (ExhaustedError, InvalidArgumentError, LLMSpec, Owner, PoolHandle,
                                   SessionExpiredError)

POOLS = [PoolHandle("shm", "p16", 64, 4, 16, "float32"), PoolHandle("shm", "p8", 24, 4, 8, "float16")]
SPECS = [LLMSpec("a", 2, 2, 16, "float32", 2.0), LLMSpec("b", 1, 4, 16, "float32", 1.0),
         LLMSpec("c", 3, 1, 8, "float16", 0.5), LLMSpec("d", 1, 1, 16, "float32", 0.0)]
TIMEOUT = 10.0


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


class MemmgrMachine(RuleBasedStateMachine):
    sessions = Bundle("sessions")

    def __init__(self):
        super().__init__()
        self.clock = Clock()
        self.m = MemoryManager(POOLS, TIMEOUT, QuotaPolicy(threshold=0.9, donate_fraction=0.5), clock=self.clock)
        self.held: dict[tuple[str, str], set[int]] = {}  # (llm, session) -> ids, the shadow model
        self.live: set[str] = set()
        self.crashed: set[str] = set()
        self.order: dict[str, int] = {}  # session ids are random uuids: draw in a stable order instead

    def _sorted(self, keys) -> list[tuple[str, str]]:
        return sorted(keys, key=lambda k: (k[0], self.order[k[1]]))

    @rule(target=sessions)
    def open(self):
        s = self.m.open_session("w")
        self.order[s] = len(self.order)
        self.live.add(s)
        return s

    @rule(s=sessions, spec=st.sampled_from(SPECS))
    def register(self, s, spec):
        if s not in self.live:
            return
        self.m.register(s, spec)

    @rule(s=sessions, llm=st.sampled_from([x.name for x in SPECS]), n=st.integers(0, 30))
    def lease(self, s, llm, n):
        if s not in self.live or llm not in self.m.llms:
            return
        try:
            ids = self.m.lease(s, llm, n)
        except ExhaustedError:
            return
        assert len(ids) == n
        for (other_llm, other_s), have in self.held.items():
            if self.m.llms[other_llm].spec.pool_key == self.m.llms[llm].spec.pool_key:
                assert not have & set(ids), f"block handed to two owners: {sorted(have & set(ids))}"
        self.held.setdefault((llm, s), set()).update(ids)

    @rule(data=st.data())
    @precondition(lambda self: any(self.held.values()))
    def release(self, data):
        key = data.draw(st.sampled_from(self._sorted(k for k, v in self.held.items() if v)))
        ids = data.draw(st.lists(st.sampled_from(sorted(self.held[key])), min_size=1, unique=True))
        self.m.release(key[1], key[0], ids)
        self.held[key] -= set(ids)

    @rule(data=st.data())
    @precondition(lambda self: any(self.held.values()))
    def bad_release(self, data):
        key = data.draw(st.sampled_from(self._sorted(k for k, v in self.held.items() if v)))
        block = data.draw(st.sampled_from(sorted(self.held[key])))
        # block ids are per pool: another owner that holds the same id (in its own pool) may release it
        others = self._sorted(k for k in self.held if k != key and k[0] in self.m.llms and block not in self.held[k])
        kind = data.draw(st.sampled_from(["twice", "foreign"] if others else ["twice"]))
        before = self.m.stats()
        try:
            if kind == "twice":
                self.m.release(key[1], key[0], [block, block])
            else:
                other = data.draw(st.sampled_from(others))
                self.m.release(other[1], other[0], [block])
        except InvalidArgumentError:
            pass
        else:
            raise AssertionError(f"bad release ({kind}) was accepted")
        assert self.m.stats() == before

    @rule(s=consumes(sessions))
    def crash(self, s):
        """The worker stops heartbeating (SIGKILL); its blocks come back after the timeout."""
        if s in self.live:
            self.live.discard(s)
            self.crashed.add(s)

    @rule(dt=st.floats(0.5, 2 * TIMEOUT))
    def tick(self, dt):
        for s in self.live:
            self.m.heartbeat(s)
        self.clock.t += dt
        for s in self.m.expire():
            assert s in self.crashed or dt >= TIMEOUT - 1e-6  # (now - last_seen) may round past TIMEOUT
            self.live.discard(s)
            self.crashed.discard(s)
            for key in [k for k in self.held if k[1] == s]:
                del self.held[key]

    @rule(llm=st.sampled_from([x.name for x in SPECS]), q=st.integers(0, 80))
    def set_quota(self, llm, q):
        if llm in self.m.llms:
            self.m.set_quota(llm, q)

    @rule()
    def adapt(self):
        before = {n: s.quota for n, s in self.m.llms.items()}
        self.m.adapt()
        for key in self.m.pools:
            names = [n for n, s in self.m.llms.items() if s.spec.pool_key == key]
            assert sum(before[n] for n in names) == sum(self.m.llms[n].quota for n in names)

    @invariant()
    def integrity(self):
        self.m.check()
        st_ = self.m.stats()
        assert st_.free_blocks + sum(len(v) for v in self.held.values()) == st_.capacity_blocks
        for (llm, s), ids in self.held.items():
            alloc = self.m.pools[self.m.llms[llm].spec.pool_key].allocator
            assert all(alloc.owner_of(i) == Owner(llm, s) for i in ids), f"{llm}/{s}: ownership drifted"


TestMemmgrMachine = MemmgrMachine.TestCase
TestMemmgrMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


# ---- many concurrent gRPC clients ----------------------------------------------------------------
OPS = st.lists(st.sampled_from(["lease", "lease", "release", "release_all", "double", "foreign",
                                "heartbeat", "quota", "adapt", "crash", "reopen"]), min_size=5, max_size=25)


class Player:
    """One worker: a real client session leasing for one LLM, with its own view of what it holds."""

    def __init__(self, address: str, llm: str, holders: dict):
        self.address, self.llm, self.holders = address, llm, holders
        self.pool = next(s for s in SPECS if s.name == llm).pool_key  # block ids are per pool
        self.client: MemmgrClient | None = None
        self.held: set[int] = set()

    async def start(self):
        self.client = MemmgrClient(self.address, f"w-{self.llm}")
        await self.client.open(heartbeats=False)
        spec = next(s for s in SPECS if s.name == self.llm)
        await self.client.register_llm(spec.name, spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.dtype, spec.rate)
        self.holders[self] = self.held

    async def step(self, op: str, rng: random.Random, svc):
        try:
            await self._step(op, rng, svc)
        except SessionExpiredError:  # a slow machine let the session lapse: its blocks are gone
            await self.crash(svc)
            await self.start()

    async def _step(self, op, rng, svc):
        c = self.client
        if op == "lease":
            try:
                ids = await c.lease(self.llm, rng.randint(1, 12))
            except ExhaustedError:
                return
            for other, theirs in self.holders.items():
                if other is not self and other.pool == self.pool and other.alive(svc):
                    assert not theirs & set(ids), f"{self.llm} got blocks {other.llm} holds: {theirs & set(ids)}"
            self.held.update(ids)
        elif op in ("release", "release_all") and self.held:
            ids = rng.sample(sorted(self.held), len(self.held) if op == "release_all" else rng.randint(1, len(self.held)))
            self.held.difference_update(ids)  # before the RPC: the server may re-lease them at once
            await c.release(self.llm, ids)
        elif op == "double" and self.held:
            b = rng.choice(sorted(self.held))
            await _expect_invalid(c.release(self.llm, [b, b]))
        elif op == "foreign":
            others = [b for o, t in self.holders.items()
                      if o is not self and o.pool == self.pool and o.alive(svc) for b in t]
            if others:
                await _expect_invalid(c.release(self.llm, [rng.choice(others)]))
        elif op == "heartbeat":
            await c.heartbeat()
        elif op == "quota":
            await c.set_quota(self.llm, rng.randint(0, 60))
        elif op == "adapt":
            await c.adapt_quotas()
        elif op in ("crash", "reopen"):
            await self.crash(svc)
            await self.start()

    def alive(self, svc) -> bool:
        """The server still counts our session (a lapsed one's blocks are legitimately re-leased)."""
        return self.client.session_id in svc.manager.sessions

    async def crash(self, svc):
        """Vanish without CloseSession: the server's expiry timer must reclaim what we held."""
        sid = self.client.session_id
        await self.client._channel.close()
        self.holders.pop(self, None)
        zombie = set(self.held)
        self.held = set()
        while sid in svc.manager.sessions:  # our blocks stay ours until the timeout fires
            for other, theirs in self.holders.items():
                assert other.pool != self.pool or not other.alive(svc) or not theirs & zombie, "a crashed session's blocks were re-leased before it expired"
            await asyncio.sleep(0.05)


async def _expect_invalid(coro):
    try:
        await coro
    except InvalidArgumentError:
        return
    raise AssertionError("a bad release was accepted")


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(OPS, min_size=3, max_size=5), st.integers(0, 2**32 - 1))
def test_concurrent_clients_never_share_a_block(op_lists, seed):
    asyncio.run(_run_clients(op_lists, seed))


async def _run_clients(op_lists, seed):
    pools = [{"head_dim": p.head_dim, "dtype": p.dtype, "num_blocks": p.num_blocks} for p in POOLS]
    svc = await start_memmgr(pools=pools, heartbeat_timeout_s=0.5)
    try:
        holders: dict = {}
        players = [Player(svc.address, SPECS[i % len(SPECS)].name, holders) for i in range(len(op_lists))]
        for p in players:
            await p.start()

        async def play(p, ops, rng):
            for op in ops:
                await p.step(op, rng, svc)
                await asyncio.sleep(0)

        await asyncio.gather(*(play(p, ops, random.Random(seed + i)) for i, (p, ops) in enumerate(zip(players, op_lists))))
        svc.manager.check()
        for p in players:
            await p.client.close()  # CloseSession frees what each still holds
        while svc.manager.sessions:  # crashed sessions: wait for the expiry timer
            await asyncio.sleep(0.05)
        stats = svc.manager.stats()
        assert stats.free_blocks == stats.capacity_blocks
        svc.manager.check()
    finally:
        await svc.stop()
