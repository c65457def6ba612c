#!/bin/bash
# One LLM unit on GPUs in one container: the CUDA MPS control daemon, the unit's memmgr (loopback only),
# then the worker. Kubernetes gives GPUs to a container, not to a pod, so the three share this one.
#   unit.sh CONFIG MEMMGR_PORT WORKER_PORT
# If memmgr or the worker exits, the other is stopped and the script exits non-zero: kubelet restarts the
# container (the whole unit, as memmgr's pool and the worker's leases only make sense together).
# SIGTERM stops the worker first (it drains and hands its blocks back), then memmgr, then the daemon.
set -u
CONFIG=${1:?usage: unit.sh CONFIG MEMMGR_PORT WORKER_PORT}
MEMMGR_PORT=${2:-50053}
WORKER_PORT=${3:-50060}
MUXSERVE=${MUXSERVE:-muxserve}                                   # tests put stand-ins here
HEALTHCHECK=${HEALTHCHECK:-python -m muxserve.healthcheck}
MPS_CONTROL=${MPS_CONTROL:-nvidia-cuda-mps-control}
export CUDA_MPS_PIPE_DIRECTORY=${CUDA_MPS_PIPE_DIRECTORY:-/tmp/nvidia-mps}
export CUDA_MPS_LOG_DIRECTORY=${CUDA_MPS_LOG_DIRECTORY:-/tmp/nvidia-log}
mps_started=0

log() { echo "unit.sh: $*" >&2; }

mps_answers() { echo get_server_list | timeout 5 "$MPS_CONTROL" >/dev/null 2>&1; }

start_mps() {
  if ! command -v "$MPS_CONTROL" >/dev/null 2>&1; then
    log "$MPS_CONTROL not found: the jobs time-share the GPU (no MPS compute shares)"
    return
  fi
  if mps_answers; then
    log "an MPS daemon already answers at $CUDA_MPS_PIPE_DIRECTORY: using it"
    return
  fi
  # Pipes left by the daemon of a previous run of this container (the volume outlives it) would make
  # clients wait on a daemon that is gone.
  rm -rf "${CUDA_MPS_PIPE_DIRECTORY:?}"/* 2>/dev/null
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if "$MPS_CONTROL" -d; then
    mps_started=1
    log "MPS control daemon started (pipes $CUDA_MPS_PIPE_DIRECTORY, logs $CUDA_MPS_LOG_DIRECTORY)"
  else
    log "could not start the MPS daemon: the jobs time-share the GPU"
  fi
}

stop() {  # stop PID NAME: SIGTERM and wait (kubelet's grace period bounds the whole)
  if [ -n "$1" ] && kill -0 "$1" 2>/dev/null; then
    log "stopping $2"
    kill -TERM "$1" 2>/dev/null
    wait "$1" 2>/dev/null
  fi
}

shutdown() {
  stop "${worker:-}" worker
  stop "${memmgr:-}" memmgr
  [ "$mps_started" = 1 ] && echo quit | "$MPS_CONTROL" >/dev/null 2>&1
  exit "$1"
}

start_mps
$MUXSERVE memmgr --config "$CONFIG" --host 127.0.0.1 --port "$MEMMGR_PORT" &
memmgr=$!
trap 'shutdown 143' TERM INT
# The worker leases from memmgr as it loads its LLMs: start it once memmgr serves.
until $HEALTHCHECK "127.0.0.1:$MEMMGR_PORT" >/dev/null 2>&1; do
  if ! kill -0 "$memmgr" 2>/dev/null; then
    wait "$memmgr"
    rc=$?
    log "memmgr exited (code $rc) before serving"
    shutdown 1
  fi
  sleep 1
done
$MUXSERVE worker --config "$CONFIG" --host 0.0.0.0 --port "$WORKER_PORT" &
worker=$!
wait -n "$memmgr" "$worker"
rc=$?
# A signal interrupts `wait` and runs the trap, which exits; reaching here means a process ended.
if kill -0 "$worker" 2>/dev/null; then gone=memmgr; else gone=worker; fi
log "$gone exited (code $rc): stopping the unit"
shutdown 1
