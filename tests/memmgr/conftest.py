"""Fixtures for memmgr tests: a real memmgr gRPC server on port 0 with small shared-memory pools.

- `async def test_...` run in a fresh event loop (hook below; no pytest-asyncio needed).
- `start_memmgr(**overrides)` (async, from helpers) starts a real server; the test must `await svc.stop()`.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # memmgr_testlib


def pytest_pyfunc_call(pyfuncitem):
    """Run `async def` tests to completion in a fresh event loop."""
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        names = pyfuncitem._fixtureinfo.argnames
        asyncio.run(pyfuncitem.obj(**{n: pyfuncitem.funcargs[n] for n in names}))
        return True
    return None
