"""deploy/k8s/overlays/gpu/unit.sh, the GPU unit's one container (MPS daemon, memmgr, worker), run for real
with stand-ins for `muxserve`, the health check and nvidia-cuda-mps-control that log what they are asked to
do: start order, the worker waiting for memmgr, stop order on SIGTERM, a dead process taking the unit down."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "k8s" / "overlays" / "gpu" / "unit.sh"

FAKE_MUXSERVE = r"""#!/bin/bash
# muxserve SERVICE --config C --host H --port P: log start and SIGTERM; memmgr marks itself SERVING after
# MEMMGR_DELAY s (MEMMGR_FAILS=1: exits 3 instead); CRASH=SERVICE:SECONDS makes that one exit 3 SECONDS
# after the worker has started.
echo "$1 start $*" >> "$UNIT_LOG"
trap 'echo "$1 term" >> "$UNIT_LOG"; exit 0' TERM
if [ "$1" = memmgr ]; then
  sleep "${MEMMGR_DELAY:-0}"
  [ -n "${MEMMGR_FAILS:-}" ] && { echo "memmgr failed" >> "$UNIT_LOG"; exit 3; }
  touch "$UNIT_DIR/memmgr.serving"
fi
if [ "${CRASH%%:*}" = "$1" ]; then
  until grep -q "^worker start" "$UNIT_LOG"; do sleep 0.05; done
  sleep "${CRASH#*:}"; echo "$1 crash" >> "$UNIT_LOG"; exit 3
fi
while true; do sleep 0.05; done
"""

FAKE_HEALTHCHECK = r"""#!/bin/bash
# python -m muxserve.healthcheck HOST:PORT: SERVING once memmgr said so
echo "check $1" >> "$UNIT_DIR/checks"
[ -f "$UNIT_DIR/memmgr.serving" ]
"""

FAKE_MPS = r"""#!/bin/bash
# nvidia-cuda-mps-control [-d]: -d starts the daemon (its control pipe appears); stdin commands otherwise
if [ "${1:-}" = -d ]; then
  echo "mps start" >> "$UNIT_LOG"; touch "$CUDA_MPS_PIPE_DIRECTORY/control"; exit 0
fi
read -r cmd
[ -f "$UNIT_DIR/mps.running" ] || [ "$cmd" = quit ] || exit 1   # no daemon answers get_server_list
echo "mps $cmd" >> "$UNIT_LOG"
"""


@pytest.fixture
def unit(tmp_path):
    """Start unit.sh with the stand-ins; yields (process, log lines reader, dir)."""
    bins = tmp_path / "bin"
    bins.mkdir()
    for name, text in (("muxserve", FAKE_MUXSERVE), ("healthcheck", FAKE_HEALTHCHECK),
                       ("nvidia-cuda-mps-control", FAKE_MPS)):
        (bins / name).write_text(text)
        (bins / name).chmod(0o755)
    pipes, logs = tmp_path / "mps-pipe", tmp_path / "mps-log"
    pipes.mkdir()
    logs.mkdir()
    procs = []

    def start(mps: bool = True, **env):
        full = {"PATH": f"{bins}:/usr/bin:/bin" if mps else "/usr/bin:/bin", "UNIT_LOG": str(tmp_path / "log"),
                "UNIT_DIR": str(tmp_path), "MUXSERVE": str(bins / "muxserve"),
                "HEALTHCHECK": str(bins / "healthcheck"), "CUDA_MPS_PIPE_DIRECTORY": str(pipes),
                "CUDA_MPS_LOG_DIRECTORY": str(logs), **env}
        p = subprocess.Popen(["bash", str(SCRIPT), "/etc/muxserve/config.yaml", "50053", "50060"], env=full,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(p)
        return p

    def lines() -> list[str]:
        f = tmp_path / "log"
        return f.read_text().splitlines() if f.exists() else []

    yield start, lines, tmp_path
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def wait_for(cond, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_starts_mps_then_memmgr_then_the_worker_once_memmgr_serves_and_stops_in_reverse(unit):
    start, lines, d = unit
    stale = d / "mps-pipe" / "log"
    stale.write_text("a pipe left by the previous container")
    p = start(MEMMGR_DELAY="1.5")
    wait_for(lambda: any(line.startswith("worker start") for line in lines()))
    started = lines()
    assert [line.split()[0:2] for line in started] == [["mps", "start"], ["memmgr", "start"], ["worker", "start"]]
    assert started[1] == "memmgr start memmgr --config /etc/muxserve/config.yaml --host 127.0.0.1 --port 50053"
    assert started[2] == "worker start worker --config /etc/muxserve/config.yaml --host 0.0.0.0 --port 50060"
    assert not stale.exists()  # cleared before the daemon started
    checks = (d / "checks").read_text().split("\n")
    assert len([c for c in checks if c]) >= 2 and checks[0] == "check 127.0.0.1:50053"  # it waited
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 143
    assert lines()[3:] == ["worker term", "memmgr term", "mps quit"], out  # the worker drains first


def test_memmgr_dying_takes_the_worker_down_and_fails_the_container(unit):
    start, lines, d = unit
    p = start(CRASH="memmgr:0.5")
    out, _ = p.communicate(timeout=30)
    assert p.returncode != 0
    assert lines()[-3:] == ["memmgr crash", "worker term", "mps quit"]
    assert "memmgr exited (code 3)" in out


def test_memmgr_failing_to_start_fails_the_container_without_a_worker(unit):
    start, lines, d = unit
    p = start(MEMMGR_FAILS="1", MEMMGR_DELAY="0.5")
    out, _ = p.communicate(timeout=30)
    assert p.returncode != 0
    assert "memmgr exited (code 3) before serving" in out
    assert not any(line.startswith("worker") for line in lines())
    assert lines()[-1] == "mps quit"


def test_worker_dying_stops_memmgr_and_fails_the_container(unit):
    start, lines, d = unit
    p = start(CRASH="worker:0.5")
    out, _ = p.communicate(timeout=30)
    assert p.returncode != 0
    assert lines()[-3:] == ["worker crash", "memmgr term", "mps quit"]
    assert "worker exited (code 3)" in out


def test_without_the_mps_binary_the_unit_runs_and_says_the_jobs_time_share(unit):
    start, lines, d = unit
    p = start(mps=False)
    wait_for(lambda: any(line.startswith("worker start") for line in lines()))
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    assert "time-share the GPU" in out
    assert not any(line.startswith("mps") for line in lines())


def test_a_running_daemon_is_used_not_restarted(unit):
    start, lines, d = unit
    (d / "mps.running").touch()  # get_server_list answers: an MPS daemon is up (e.g. the node's)
    (d / "mps-pipe" / "control").touch()
    p = start()
    wait_for(lambda: any(line.startswith("worker start") for line in lines()))
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    assert "already answers" in out
    assert (d / "mps-pipe" / "control").exists()  # its pipes are left alone
    assert "mps start" not in lines() and "mps quit" not in lines()  # not ours to stop


def test_script_is_executable_bash():
    assert SCRIPT.read_text().startswith("#!/bin/bash\n")
    assert os.access(SCRIPT, os.X_OK)
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
