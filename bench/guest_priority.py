"""A short step beside a long OpenMP job on one core: how the OS priority of the long one decides the short one's
latency: the physics behind the "guests" that session 18 tried in the engine's admission and dropped (a small LLM's
decode steps on the cores of a big LLM's prefill, that prefill's job process at a higher nice value; measured in
the mesh and worse there: docs/benchmarks.md, multiplexing, session 18).

The host: a 2-thread torch loop on two cores (products of a 160-token prefill of a 1024-wide model). The guest:
a one-thread step of about 1.7 ms alone (batch-8 products of a 256-wide model) on the second core, again and
again with a short sleep between (a small LLM's decode steps). Each case runs both in their own processes for
--seconds; the host's nice value varies, the guest's stays the caller's. Prints the guest's step p50 / p99 (ms)
and the host's iterations per second, alone and beside each other, for --rounds interleaved rounds.

    python bench/guest_priority.py --nice 0,5,10,19 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time


def host(nice: int, seconds: float, cores: list[int], q) -> None:
    import torch

    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
    os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + nice)
    x, w1, w2 = torch.randn(160, 1024), torch.randn(1024, 2816), torch.randn(2816, 1024)  # [tokens, hidden] ...
    for _ in range(5):
        (x @ w1) @ w2
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        (x @ w1) @ w2
        n += 1
    q.put(("host_it_s", n / (time.perf_counter() - t0)))


def guest(seconds: float, core: int, reps: int, gap_s: float, q) -> None:
    import torch

    os.sched_setaffinity(0, [core])
    torch.set_num_threads(1)
    x, w = torch.randn(8, 256), torch.randn(256, 4096)  # [rows, hidden] @ [hidden, 4 x hidden]
    for _ in range(50):
        x @ w
    if reps == 0:  # calibration: how many products make ~1.7 ms alone
        t = time.perf_counter()
        for _ in range(200):
            x @ w
        q.put(max(1, round(0.0017 / ((time.perf_counter() - t) / 200))))
        return
    ms, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        for _ in range(reps):
            x @ w
        ms.append((time.perf_counter() - t) * 1e3)
        time.sleep(gap_s)
    ms.sort()
    q.put(("guest_ms", {"p50": ms[len(ms) // 2], "p99": ms[int(len(ms) * 0.99)], "steps": len(ms)}))


def run(ctx, jobs: list) -> dict:
    q = ctx.Queue()
    procs = [ctx.Process(target=f, args=(*a, q)) for f, a in jobs]
    for p in procs:
        p.start()
    out = dict(q.get() for _ in procs)
    for p in procs:
        p.join()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nice", default="0,5,10,19", help="the host's nice values (added to the caller's)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--gap-ms", type=float, default=0.5, help="the guest's sleep between steps")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # the engine's omp_spin_count default
    cores = sorted(os.sched_getaffinity(0))[:2]
    if len(cores) < 2:
        raise SystemExit("needs 2 cores")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=guest, args=(0, cores[1], 0, 0, q))
    p.start()
    reps = q.get()
    p.join()
    rows = []
    for rnd in range(args.rounds):
        cases = [("host alone", 0, True, False), ("guest alone", 0, False, True)]
        cases += [(f"both, host nice +{n}", n, True, True) for n in (int(x) for x in args.nice.split(","))]
        for label, nice, with_host, with_guest in cases:
            jobs = ([(host, (nice, args.seconds, cores))] if with_host else []) + (
                [(guest, (args.seconds, cores[1], reps, args.gap_ms / 1000))] if with_guest else [])
            res = run(ctx, jobs)
            rows.append({"round": rnd, "case": label, **res})
            g = res.get("guest_ms")
            print(f"round {rnd} {label:22s} guest p50/p99 "
                  + (f"{g['p50']:.2f} / {g['p99']:.2f} ms" if g else "-") + "  host "
                  + (f"{res['host_it_s']:.1f} it/s" if "host_it_s" in res else "-"), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"cores": cores, "guest_reps": reps, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
