#!/usr/bin/env bash
# Issue 5's GPU checks in one run (parity tests on CUDA, MPS, benchmarks), for a machine with an NVIDIA
# GPU and a CUDA build of torch + transformers already installed (nothing is installed here).
#
#   OUT=/tmp/gpu bash scripts/gpu_check.sh [budget_s]
#   DEVICE=cpu OUT=/tmp/dry bash scripts/gpu_check.sh 300     # a dry run of the script itself on a CPU
#
# Each step has its own time limit (a share of budget_s, default 540 s) and appends to $OUT/gpu.log;
# the benchmarks' JSON lines go to $OUT/*.json. A failing step is logged and the next one runs; the
# exit status is the number of failed steps. Results and the command go into docs/benchmarks.md (GPU).
set -u
OUT=${OUT:-/tmp/muxserve-gpu}
BUDGET=${1:-540}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
LOG=$OUT/gpu.log
failed=0

step() {  # step NAME SECONDS CMD...: run CMD under a limit, log its output and status
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "=== $name: rc $rc in $((SECONDS - t0))s" | tee -a "$LOG"
  [ "$rc" = 0 ] || failed=$((failed + 1))
}

share() { echo $((BUDGET * $1 / 100)); }

bench() {  # bench NAME ARGS...: full output to the log, its last line (the JSON summary) to $OUT/NAME.json
  local name=$1
  shift
  python3 "bench/$name.py" "$@" | tee /tmp/muxserve-$name.out && tail -1 "/tmp/muxserve-$name.out" >"$OUT/$name.json"
}
export -f bench
export OUT

step env "$(share 3)" bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())"'
step parity-bf16 "$(share 20)" python3 -m pytest -q -p no:cacheprovider tests/engine_model/test_model_vs_hf.py \
  tests/engine_model/test_jobs.py::test_cuda_jobs_share_weights_and_pool_over_ipc --device "$DEVICE" --dtype bfloat16
step parity-fp16 "$(share 10)" python3 -m pytest -q -p no:cacheprovider tests/engine_model/test_model_vs_hf.py \
  --device "$DEVICE" --dtype float16
step parity-fp32 "$(share 10)" python3 -m pytest -q -p no:cacheprovider tests/engine_model/test_model_vs_hf.py \
  --device "$DEVICE" --dtype float32
step mps "$(share 7)" python3 -m pytest -q -p no:cacheprovider tests/engine_model/test_compute_share.py --device "$DEVICE"
step decode-bandwidth "$(share 15)" bash -c 'bench "$@"' _ decode_bandwidth --device "$DEVICE" --dtype bfloat16 --rounds 3
step engine-throughput "$(share 30)" bash -c 'bench "$@"' _ engine_throughput --device "$DEVICE" --dtype bfloat16 \
  --hidden 2048 --layers 16 --heads 16 --kv-heads 8 --intermediate 5632
echo "failed steps: $failed" | tee -a "$LOG"
exit "$failed"
