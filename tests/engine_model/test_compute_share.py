"""Compute shares on CUDA: the MPS daemon start and the child's MPS percentage.

Where no GPU is present (CI), `nvidia-cuda-mps-control` is absent too: the start fails with a logged
reason and jobs time-share. A daemon's control pipe (a FIFO, as the daemon makes it) is detected and
reused. With `--device cuda` on a machine with the binary, the daemon is really started.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

import pytest

from services.worker.engine.compute_share import (MPS_CONTROL, ComputeShare, child_env, mps_running,
                                                  start_mps_daemon)


@pytest.fixture
def pipe_dir(tmp_path, monkeypatch):
    d = tmp_path / "mps-pipe"
    d.mkdir()
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(d))
    return d


def test_without_the_mps_binary_jobs_time_share(pipe_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-cuda-mps-control on it
    with caplog.at_level(logging.WARNING):
        assert start_mps_daemon() is False
        assert child_env(ComputeShare(gpu_percentage=30), "cuda:0") == {}
    assert MPS_CONTROL in caplog.text and "time-share" in caplog.text


def test_a_running_daemons_pipe_is_used(pipe_dir, tmp_path, monkeypatch):
    os.mkfifo(pipe_dir / "control")
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to start: the pipe is there
    assert mps_running() and start_mps_daemon() is True
    assert child_env(ComputeShare(gpu_percentage=30), "cuda:0") == {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "30"}
    assert child_env(ComputeShare(gpu_percentage=30), "cpu") == {}  # CPU shares are cores, not MPS


def test_mps_daemon_starts_on_a_gpu(device, tmp_path, monkeypatch):
    if not device.startswith("cuda") or shutil.which(MPS_CONTROL) is None:
        pytest.skip("needs --device cuda and nvidia-cuda-mps-control")
    if mps_running():
        pytest.skip("an MPS daemon is already running")
    monkeypatch.setenv("CUDA_MPS_LOG_DIRECTORY", str(tmp_path))
    try:
        assert start_mps_daemon(), "the MPS daemon did not start (see the log above)"
    finally:
        subprocess.run([MPS_CONTROL], input=b"quit\n", timeout=10)
