"""Job processes: a prefill or decode job of one LLM in its own OS process (types.Job).

`ProcessJob(spec, weights, pool, block_size, device, share, omp_spin_count=...)` spawns a child
(torch.multiprocessing, spawn context) that builds a ModelRunner over the parent's weight tensors and
pool tensor, passed as shared memory (CPU) or CUDA IPC handles (or, with `pool_attach`, a picklable callable the child
calls to map the pool itself: memmgr's segment): nothing is reloaded from disk or copied, so the
prefill job's K/V writes are what the decode job reads. Steps go over a pipe; a reader thread
resolves the futures in order. If the child dies, its pending futures fail with JobCrashedError,
`alive` turns False, and `restart()` spawns a new child over the same weights and pool;
`rebind_pool()` moves a running child onto another pool (memmgr restarted: services/worker/kv.py).
`wait_started()` returns once the child has built its runner and raises JobCrashedError (with the child's
own error) as soon as it died instead: a caller never waits on a child that is gone.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable
from multiprocessing.connection import wait

import torch
import torch.multiprocessing as mp

from .compute_share import ComputeShare, apply_in_child, child_env
from .loader import ModelSpec, share_weights
from .types import JobCrashedError, StepInput

log = logging.getLogger(__name__)
_ENV_LOCK = threading.Lock()  # child env vars are set in os.environ only around process start


@dataclass(frozen=True)
class NewPool:
    """A message to a job process: rebuild the runner over another pool (`attach()`, else `pool`)."""

    attach: Callable[[], torch.Tensor] | None = None
    pool: torch.Tensor | None = None
    drop_old: Callable[[], None] | None = None  # called once the old runner is gone (unmaps the old pool)


def _child_main(spec, weights, pool, block_size, device, share, conn, pool_attach=None) -> None:
    """Job process body: build a runner over the shared tensors, then serve steps until EOF/None."""
    try:
        apply_in_child(share)
        from .runner import ModelRunner, freeze_heap

        if pool_attach is not None:
            pool = pool_attach()  # [num_blocks, 2, block_size, head_dim], the parent's memory
        runner = ModelRunner(spec, weights, pool, block_size, device)
        freeze_heap()
    except BaseException as exc:  # noqa: BLE001 - tell the parent why, as text (exc may not pickle)
        conn.send(("failed", os.getpid(), f"{type(exc).__name__}: {exc}"))
        conn.close()
        os._exit(1)
    conn.send(("ready", os.getpid(), None))
    current = share
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            msg = None
        if msg is None:
            conn.close()
            os._exit(0)  # skip interpreter teardown (seconds with torch loaded); nothing left to flush
        step_id, step = msg
        if isinstance(step, NewPool):  # memmgr restarted: the same weights over its new segment
            runner = pool = None
            runner = ModelRunner(spec, weights, step.attach() if step.attach else step.pool, block_size, device)
            if step.drop_old is not None:
                step.drop_old()
            conn.send((step_id, None, None))
            continue
        if step.share is not None and step.share != current:  # the placement changed this job's cores
            apply_in_child(step.share)
            current = step.share
        try:
            conn.send((step_id, runner.execute(step), None))
        except Exception as exc:  # noqa: BLE001 - the parent re-raises it on the step's future
            conn.send((step_id, None, exc))


class ProcessJob:
    """types.Job backed by a child process sharing `weights` and `pool` with this process."""

    def __init__(
        self,
        spec: ModelSpec,
        weights: dict[str, torch.Tensor],
        pool: torch.Tensor,
        block_size: int,
        device: str = "cpu",
        share: ComputeShare | None = None,
        name: str = "",
        pool_attach=None,
        omp_spin_count: int = -1,
    ):
        if pool_attach is None and pool.device.type == "cpu" and not pool.is_shared():
            raise ValueError("a ProcessJob needs a shared pool: allocate_pool(..., shared=True), or pool_attach")
        self.pool_attach = pool_attach
        self.spec, self.weights, self.pool = spec, share_weights(weights), pool
        self.block_size, self.device = block_size, device
        self.omp_spin_count = omp_spin_count  # CPU: the child's GOMP_SPINCOUNT (compute_share.child_env)
        self.share = share or ComputeShare(threads=torch.get_num_threads())
        self.name = name or f"{spec.name}-job"
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._pending: dict[int, Future] = {}
        self._ready = threading.Event()
        self.pid: int | None = None
        self._start()

    @property
    def alive(self) -> bool:
        return self._proc.is_alive() and not self._dead

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        pool = None if self.pool_attach is not None else self.pool  # the child maps it itself
        args = (self.spec, self.weights, pool, self.block_size, self.device, self.share, child_conn,
                self.pool_attach)
        proc = ctx.Process(target=_child_main, args=args, name=self.name, daemon=True)
        with self._lock:
            self._proc, self._dead, self._ready = proc, False, threading.Event()
            self._settled, self.start_error = threading.Event(), ""  # set on ready or on death
            self._exited = threading.Event()  # set once the reader has reaped the child and marked it dead
        with _ENV_LOCK:
            env = child_env(self.share, self.device, self.omp_spin_count)
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                self._proc.start()
            finally:
                for k, v in saved.items():
                    os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        child_conn.close()
        threading.Thread(target=self._read, args=(self._conn, self._proc), daemon=True,
                         name=f"{self.name}-reader").start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the child has built its runner; False at once if it died, or after `timeout`."""
        self._settled.wait(timeout)
        return self._ready.is_set() and not self._dead

    def wait_started(self, timeout: float = 600.0) -> None:
        """Return once the child has built its runner; JobCrashedError saying why if it died (at once) or
        did not start within `timeout` seconds."""
        if self.wait_ready(timeout):
            return
        proc = self._proc
        if self.start_error:  # it exits right after saying why; the reader thread reaps it (one joiner only:
            self._exited.wait(timeout=10)  # a second waitpid on the same child can see it still alive)
        why = self.start_error or (f"exit code {proc.exitcode}" if proc.exitcode is not None
                                   else f"not ready after {timeout:.0f}s")
        raise JobCrashedError(f"job {self.name} (pid {proc.pid}) could not start: {why}")

    def submit(self, step: StepInput) -> Future:
        fut: Future = Future()
        with self._lock:
            if self._dead:
                fut.set_exception(JobCrashedError(f"job {self.name} is not running"))
                return fut
            step_id = next(self._ids)
            self._pending[step_id] = fut
            try:
                self._conn.send((step_id, step))
            except (OSError, ValueError) as exc:
                self._pending.pop(step_id)
                fut.set_exception(JobCrashedError(f"job {self.name}: cannot send step ({exc})"))
        return fut

    def _read(self, conn, proc) -> None:
        """Resolve futures from the child's replies; on its death fail whatever is pending."""
        try:
            while True:
                ready = wait([conn, proc.sentinel])
                if conn not in ready:
                    break  # the child exited with nothing left to read
                self._resolve(*conn.recv())
        except (EOFError, OSError, ValueError):
            pass  # the pipe closed: the child died or we closed it
        self._fail_pending(proc)

    def _resolve(self, step_id, out, exc) -> None:
        if step_id in ("ready", "failed"):
            self.pid = out
            if step_id == "ready":
                self._ready.set()
            else:
                self.start_error = exc
            self._settled.set()
            return
        with self._lock:
            fut = self._pending.pop(step_id, None)
        if fut is not None:
            fut.set_exception(exc) if exc is not None else fut.set_result(out)

    def _fail_pending(self, proc) -> None:
        proc.join(timeout=5)
        with self._lock:
            if proc is not self._proc:
                return
            self._dead = True
            pending, self._pending = self._pending, {}
        self._settled.set()
        self._exited.set()
        if proc.exitcode not in (0, None) or pending:
            log.error("job %s (pid %s) died with exit code %s; %d steps failed",
                      self.name, proc.pid, proc.exitcode, len(pending))
        for fut in pending.values():
            fut.set_exception(JobCrashedError(f"job {self.name} (pid {proc.pid}) died, exit code {proc.exitcode}"))

    def rebind_pool(self, pool: torch.Tensor, pool_attach=None, drop_old=None, timeout: float = 120.0) -> None:
        """Move the running child onto another pool of the same layout (no respawn: it keeps its
        weights and rebuilds its runner; then calls drop_old, a picklable callable, e.g. to unmap the
        old segment). Raises JobCrashedError if the child is not running or fails."""
        self.pool, self.pool_attach = pool, pool_attach
        fut: Future = self.submit(NewPool(pool_attach, None if pool_attach else pool, drop_old))
        fut.result(timeout)

    def restart(self) -> None:
        """Stop the child if it still runs and start a new one over the same weights and pool."""
        self._stop()
        self._start()

    def _stop(self) -> None:
        proc = self._proc
        if proc.is_alive():
            try:
                self._conn.send(None)
            except (OSError, ValueError):
                pass
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        with self._lock:
            self._dead = True
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            fut.set_exception(JobCrashedError(f"job {self.name} stopped"))
        self._conn.close()

    def close(self) -> None:
        self._stop()
