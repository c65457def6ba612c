# One image for every muxserve service; docker-compose.yml picks the service by command.
FROM python:3.11-slim
# gcc + libc6-dev: the engine builds its native CPU kernels on first use (services/worker/engine/native.py);
# without them it falls back to torch (matmuls, and decode steps layer by layer).
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-tools gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY muxserve muxserve
COPY services services
COPY protos protos
COPY examples examples
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir -e . \
    && python -m muxserve.tiny /app/models/tiny-llama --arch llama --hidden-size 128 --layers 4 \
       --heads 4 --kv-heads 2 --intermediate-size 256 \
    && muxserve profile --model /app/models/tiny-llama --name tiny-llama --out /app/models/tiny-llama-cost.json \
       --device cpu --devices 1,2 --shares 50,100 --batches 1,4,16 --seqs 16,64,256 --reps 1
# grpc_health_probe-like check without an extra binary: python -m muxserve.healthcheck HOST:PORT
ENTRYPOINT ["muxserve"]
