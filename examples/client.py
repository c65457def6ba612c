"""Stream a completion from a running muxserve through the generated gRPC stubs.

    python examples/client.py --model tiny-llama --prompt "Hello, world" --max-tokens 32

Start the system first (`bash scripts/quickstart.sh`). The default model has random weights, so its text
is meaningless; the request path is real.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import grpc

from muxserve.v1 import router_pb2, router_pb2_grpc


async def stream(address: str, model: str, prompt: str, max_tokens: int, temperature: float,
                 api_key: str | None = None) -> int:
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        request = router_pb2.GenerateRequest(
            model=model, prompt=prompt,
            sampling=router_pb2.SamplingParams(max_tokens=max_tokens, temperature=temperature))
        try:
            async for chunk in stub.Generate(request, metadata=metadata):
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
                if chunk.finish_reason:
                    print(f"\n[finish_reason={chunk.finish_reason} prompt_tokens={chunk.usage.prompt_tokens}"
                          f" completion_tokens={chunk.usage.completion_tokens}]")
        except grpc.aio.AioRpcError as err:
            print(f"\nerror: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", default="127.0.0.1:50051")
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--prompt", default="Hello, world")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--api-key", default=os.environ.get("MUXSERVE_API_KEY"), help="when router.api_keys is set")
    a = ap.parse_args()
    return asyncio.run(stream(a.address, a.model, a.prompt, a.max_tokens, a.temperature, a.api_key))


if __name__ == "__main__":
    sys.exit(main())
