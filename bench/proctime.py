"""CPU seconds of processes and their descendants (Linux /proc), for benchmarks that account what each
service of a mesh spent."""

from __future__ import annotations

import os
from pathlib import Path


def _table() -> tuple[dict[int, int], dict[int, float], dict[int, str]]:
    """(parent pid, CPU seconds user + system, command line) of every process now."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu, cmd = {}, {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            line = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        pid = int(d)
        parent[pid], cpu[pid], cmd[pid] = int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, line
    return parent, cpu, cmd


def _under(pid: int, root: int, parent: dict[int, int]) -> bool:
    while pid > 1 and pid != root:
        pid = parent.get(pid, 1)
    return pid == root


def tree_cpu_s(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process and all its descendants."""
    parent, cpu, _ = _table()
    return {name: sum(c for pid, c in cpu.items() if _under(pid, root, parent)) for name, root in roots.items()}


def services_cpu_s(launcher: int) -> dict[str, float]:
    """CPU seconds so far of each service `muxserve up` (pid `launcher`) started, by the service named in
    its command line (`python -m muxserve.cli <service>`); a worker's job processes are counted apart as
    `jobs`, redis-server as `redis`."""
    parent, cpu, cmd = _table()
    out: dict[str, float] = {}
    for pid, c in cpu.items():
        if pid == launcher or not _under(pid, launcher, parent):
            continue
        words = cmd[pid].split()
        if "muxserve.cli" in words and words.index("muxserve.cli") + 1 < len(words):
            name = words[words.index("muxserve.cli") + 1]
        elif "redis-server" in cmd[pid]:
            name = "redis"
        elif "multiprocessing" in cmd[pid]:
            name = "jobs"
        else:
            name = "other"
        out[name] = out.get(name, 0.0) + c
    return out
