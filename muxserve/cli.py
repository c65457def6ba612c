"""The `muxserve` command: start the whole mesh, one service, plan a placement, or write a tiny model.

    muxserve up --config FILE [--grpc-port 50051] [--http-port 8000]   every service as local processes
    muxserve router|placer|memmgr|worker --config FILE one service (what docker compose runs)
    muxserve plan --config FILE [--policy P] [--cost-table FILE] [--json]
    muxserve profile ...                               measure a cost table on this machine's devices
    muxserve simulate --config FILE | --preset P ...   serve a placement in the simulator (virtual clock)
    muxserve write-tiny-model PATH [--arch llama]      a small random-weight HF checkpoint
    muxserve config --print-defaults | --check FILE    every config key with its default; validate a file

A bad config (missing file, unknown key, bad value) prints one line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

SERVICES = ("router", "placer", "memmgr", "worker")


def _service_main(name: str, argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog=f"muxserve {name}")
    ap.add_argument("--config", required=True)
    ap.add_argument("--port", type=int, default=None, help="listen port (overrides the config)")
    ap.add_argument("--host", default=None, help="listen host (overrides the config)")
    if name == "router":
        ap.add_argument("--http-port", type=int, default=None, help="HTTP API port (router.http_port; -1: off)")
    if name == "worker":
        ap.add_argument("--worker-id", default=None)
        ap.add_argument("--num-devices", type=int, default=None, help="devices (cores/GPUs) of this worker")
    args = ap.parse_args(argv)
    module = importlib.import_module(f"services.{name}.server")
    kwargs = {"port": args.port, "host": args.host}
    if name == "router":
        kwargs["http_port"] = args.http_port
    if name == "worker":
        kwargs.update(worker_id=args.worker_id, num_devices=args.num_devices)
    return module.main(args.config, **kwargs) or 0


def _up(argv: list[str]) -> int:
    from muxserve.launcher import up_main

    return up_main(argv)


def _delegate(module: str, func: str, argv: list[str]) -> int:
    return getattr(importlib.import_module(module), func)(argv) or 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    from muxserve.config_errors import ConfigError

    try:
        return _dispatch(argv[0], argv[1:])
    except ConfigError as e:
        print(f"muxserve {argv[0]}: config error: {e}", file=sys.stderr)
        return 2


def _dispatch(cmd: str, rest: list[str]) -> int:
    if cmd == "up":
        return _up(rest)
    if cmd in SERVICES:
        return _service_main(cmd, rest)
    if cmd == "plan":
        return _delegate("services.placer.cli", "plan_main", rest)
    if cmd == "profile":
        return _delegate("services.placer.cli", "profile_main", rest)
    if cmd == "simulate":
        return _delegate("services.placer.simulator.cli", "simulate_main", rest)
    if cmd == "config":
        return _delegate("muxserve.config_yaml", "main", rest)
    if cmd == "write-tiny-model":
        from muxserve.tiny import main as tiny_main

        tiny_main(rest)
        return 0
    print(f"muxserve: unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
