"""Job processes: prefill in one process, decode in another, over shared weights and one shared pool."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from muxserve.tiny import write_tiny_checkpoint
from services.worker.engine.compute_share import ComputeShare, split_cores
from services.worker.engine.jobs import ProcessJob
from services.worker.engine.loader import load_weights
from services.worker.engine.pool import allocate_pool, blocks_for_tokens
from services.worker.engine.types import JobCrashedError, SamplingParams, SeqStep, StepInput
from tests.engine_model.helpers import hf_model

BS = 4
BIG = dict(hidden_size=512, num_layers=4, num_heads=8, num_kv_heads=4, intermediate_size=1376)  # ~48 MB


@pytest.fixture(scope="module")
def unit(tmp_path_factory):
    """A ~48 MB llama with a prefill and a decode job, plus a tiny-model job as a memory baseline."""
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("big") / "llama", "llama", seed=11, **BIG)
    spec, weights = load_weights(path)
    pool = allocate_pool(2048, BS, spec.head_dim, torch.float32, shared=True)
    pre_share, dec_share = split_cores([0.5, 0.5])
    prefill = ProcessJob(spec, weights, pool, BS, share=pre_share, name="prefill")
    decode = ProcessJob(spec, weights, pool, BS, share=dec_share, name="decode")
    small_spec, small_w = load_weights(write_tiny_checkpoint(tmp_path_factory.mktemp("small") / "s", "llama"))
    small_pool = allocate_pool(2048, BS, small_spec.head_dim, torch.float32, shared=True)
    baseline = ProcessJob(small_spec, small_w, small_pool, BS, share=ComputeShare(threads=1), name="baseline")
    yield dict(path=path, spec=spec, pool=pool, prefill=prefill, decode=decode, baseline=baseline)
    for job in (prefill, decode, baseline):
        job.close()


def memory(pid: int) -> dict[str, int]:
    """smaps_rollup fields of a process, in bytes."""
    out = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        key, *rest = line.split()
        if rest and rest[0].isdigit():
            out[key.rstrip(":")] = int(rest[0]) * 1024
    return out


def run_greedy(unit, prompts: dict[int, list[int]], new: int) -> dict[int, list[int]]:
    """Prefill on the prefill job, then `new - 1` decode steps on the decode job."""
    spec = unit["spec"]
    n = blocks_for_tokens(max(map(len, prompts.values())) + new, BS, spec.num_layers, spec.num_kv_heads)
    tables = {sid: list(range(2000 - (i + 1) * n, 2000 - i * n)) for i, sid in enumerate(prompts)}
    seqs = {sid: list(p) for sid, p in prompts.items()}

    def step(job, plan):
        steps = [SeqStep(sid, seqs[sid][-k:], len(seqs[sid]) - k, tables[sid], SamplingParams()) for sid, k in plan]
        out = job.submit(StepInput(spec.name, steps)).result(timeout=60)
        for (sid, _), tok in zip(plan, out.token_ids):
            seqs[sid].append(tok)

    step(unit["prefill"], [(sid, len(p)) for sid, p in prompts.items()])
    for _ in range(new - 1):
        step(unit["decode"], [(sid, 1) for sid in prompts])
    return {sid: s[len(prompts[sid]):] for sid, s in seqs.items()}


def test_prefill_and_decode_processes_match_generate(unit):
    prompts = {0: [1, 20, 30, 40, 50, 60, 70], 1: list(range(100, 111))}
    ours = run_greedy(unit, prompts, new=10)
    hf = hf_model(unit["path"])
    for sid, p in prompts.items():
        ref = hf.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False)[0, len(p):].tolist()
        cut = next((i + 1 for i, t in enumerate(ours[sid]) if t in unit["spec"].eos_token_ids), 10)
        assert ours[sid][:cut] == ref
    assert unit["pool"][1900:2000].abs().sum() > 0  # the children's K/V writes landed in OUR pool tensor


def test_job_processes_share_weights_not_copy(unit):
    run_greedy(unit, {0: [5, 6, 7]}, new=3)  # both children have touched every weight
    unit["baseline"].submit(StepInput("s", [SeqStep(0, [1, 2], 0, list(range(8)), SamplingParams())])).result(60)
    wb = unit["spec"].weight_bytes
    base = memory(unit["baseline"].pid)
    for name in ("prefill", "decode"):
        m = memory(unit[name].pid)
        private = m["Private_Dirty"] + m["Private_Clean"] - base["Private_Dirty"] - base["Private_Clean"]
        assert m["Shared_Dirty"] + m["Shared_Clean"] - base["Shared_Dirty"] >= 0.9 * wb, (name, m)
        assert private < 0.25 * wb, f"{name} child holds {private / 1e6:.1f} MB private vs {wb / 1e6:.1f} MB weights"


def test_killed_child_fails_its_steps_and_restarts(unit):
    job, spec = unit["decode"], unit["spec"]
    table = list(range(blocks_for_tokens(400, BS, spec.num_layers, spec.num_kv_heads)))
    long_step = StepInput(spec.name, [SeqStep(0, list(range(1, 384)), 0, table, SamplingParams())])
    futures = [job.submit(long_step) for _ in range(8)]
    futures[0].result(timeout=60)  # the child is busy with the rest now
    os.kill(job.pid, signal.SIGKILL)
    errors = []
    for f in futures[1:]:
        try:
            f.result(timeout=30)
        except JobCrashedError as exc:
            errors.append(exc)
    assert errors and "died" in str(errors[-1])
    deadline = time.monotonic() + 10
    while job.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not job.alive
    with pytest.raises(JobCrashedError):
        job.submit(long_step).result(timeout=5)
    job.restart()
    assert job.wait_ready(60) and job.alive
    assert job.submit(long_step).result(timeout=60).token_ids == futures[0].result().token_ids



def test_cuda_jobs_share_weights_and_pool_over_ipc(device, dtype, tmp_path):
    """--device cuda: prefill and decode children over CUDA IPC handles of the parent's weights and pool
    give transformers' greedy tokens (check_greedy's near-tie rule below fp32), and neither child holds
    a second copy of the weights: the GPU memory a big-model child takes (device-wide free memory
    before and after it starts) exceeds a tiny-model child's by under 25% of the weights."""
    if not device.startswith("cuda"):
        pytest.skip("needs --device cuda")
    from tests.engine_model.test_model_vs_hf import check_greedy

    big = dict(hidden_size=2048, num_layers=8, num_heads=16, num_kv_heads=8, intermediate_size=5632)  # ~1.3 GB fp32
    path = write_tiny_checkpoint(tmp_path / "big", "llama", seed=11, **big)
    spec, weights = load_weights(path, dtype, device)
    pool = allocate_pool(2048, BS, spec.head_dim, dtype, device)
    small_spec, small_w = load_weights(write_tiny_checkpoint(tmp_path / "small", "llama"), dtype, device)
    small_pool = allocate_pool(256, BS, small_spec.head_dim, dtype, device)
    free = lambda: torch.cuda.mem_get_info(torch.device(device))[0]  # noqa: E731 - device-wide, all processes
    jobs, taken = {}, {}
    try:
        before = free()
        jobs["baseline"] = ProcessJob(small_spec, small_w, small_pool, BS, device, name="baseline")
        jobs["baseline"].submit(StepInput("s", [SeqStep(0, [1, 2], 0, list(range(8)), SamplingParams())])).result(60)
        taken["baseline"] = before - free()
        for name, pct in (("prefill", 30), ("decode", 70)):
            before = free()
            jobs[name] = ProcessJob(spec, weights, pool, BS, device, ComputeShare(gpu_percentage=pct), name)
            jobs[name].submit(StepInput(spec.name, [SeqStep(0, [1, 2, 3], 0, list(range(spec.num_layers
                                                    * spec.num_kv_heads)), SamplingParams())])).result(60)
            taken[name] = before - free()
        wb = spec.weight_bytes
        for name in ("prefill", "decode"):
            extra = taken[name] - taken["baseline"]
            assert extra < 0.25 * wb, f"{name} child takes {extra / 1e6:.0f} MB more GPU memory than a tiny " \
                                      f"model's child ({wb / 1e6:.0f} MB of weights)"
        prompts = {0: [1, 20, 30, 40, 50, 60, 70], 1: list(range(100, 111))}
        ours = run_greedy(dict(spec=spec, **jobs), prompts, new=10)
        hf = hf_model(path, device, dtype)
        for sid, p in prompts.items():
            ref = hf.generate(torch.tensor([p], device=device), max_new_tokens=10, do_sample=False)[0, len(p):]
            cut = next((i + 1 for i, t in enumerate(ours[sid]) if t in spec.eos_token_ids), 10)
            check_greedy(hf, p, ours[sid][:cut], ref.tolist(), dtype)
        assert pool[1900:2000].abs().sum() > 0  # the children's K/V writes landed in OUR pool tensor
    finally:
        for job in jobs.values():
            job.close()


def test_a_job_that_cannot_start_fails_at_once_with_its_reason(tmp_path):
    """The child fails while mapping its pool (here: a file that does not exist): wait_started raises
    JobCrashedError with the child's own error as soon as it died, never waiting out its timeout."""
    import functools

    spec, weights = load_weights(write_tiny_checkpoint(tmp_path / "t", "llama"))
    missing = functools.partial(os.open, str(tmp_path / "no-such-segment"), os.O_RDONLY)
    job = ProcessJob(spec, weights, None, BS, share=ComputeShare(threads=1), name="doomed", pool_attach=missing)
    try:
        t0 = time.monotonic()
        with pytest.raises(JobCrashedError, match="could not start: FileNotFoundError"):
            job.wait_started(timeout=120)
        assert time.monotonic() - t0 < 60 and not job.alive and not job.wait_ready(0)
    finally:
        job.close()


def _child_environ(pid: int) -> dict[str, str]:
    raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return dict(kv.decode().split("=", 1) for kv in raw if b"=" in kv)


def test_cpu_job_children_get_their_openmp_spin_count(tmp_path, monkeypatch):
    """A CPU job's child starts with GOMP_SPINCOUNT = omp_spin_count (idle OpenMP threads must not
    keep spinning on the cores the next job's dispatch runs on), the parent's environment is left as
    it was, a GOMP_SPINCOUNT already in the environment wins, and -1 leaves libgomp's default."""
    spec, weights = load_weights(write_tiny_checkpoint(tmp_path / "t", "llama"))
    pool = allocate_pool(256, BS, spec.head_dim, torch.float32, shared=True)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    got = {}
    for name, count, env in (("set", 1234, None), ("default", -1, None), ("user", 1234, "77")):
        if env is not None:
            monkeypatch.setenv("GOMP_SPINCOUNT", env)
        job = ProcessJob(spec, weights, pool, BS, share=ComputeShare(threads=1), name=name, omp_spin_count=count)
        try:
            job.wait_started(timeout=120)
            got[name] = _child_environ(job.pid).get("GOMP_SPINCOUNT")
        finally:
            job.close()
        if env is None:
            assert "GOMP_SPINCOUNT" not in os.environ
    assert got == {"set": "1234", "default": None, "user": "77"}
