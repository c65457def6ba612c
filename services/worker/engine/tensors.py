"""Read a checkpoint's *.safetensors tensor by tensor (safetensors.safe_open), with progress in the log.

`Reader(path, dtype, device)`: `names`, `take(name)` (one tensor, converted, read from its shard's memory map),
`close()`. Only the tensor being converted is held beside what the caller keeps, so loading needs about the
model's size in RAM, not twice it. Each shard logs when its last tensor has been read (shard i/n, MiB, seconds),
and `close()` logs the total.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)


class Reader:
    def __init__(self, path: str | Path, dtype: torch.dtype, device: str | torch.device = "cpu"):
        from safetensors import safe_open

        self.files = sorted(Path(path).glob("*.safetensors"))
        if not self.files:
            raise FileNotFoundError(f"no *.safetensors in {path}")
        self.dtype, self.device = dtype, torch.device(device)
        self._open = [safe_open(str(f), framework="pt") for f in self.files]
        self._where = {n: i for i, h in enumerate(self._open) for n in h.keys()}
        self._left = [len(list(h.keys())) for h in self._open]
        self._bytes = [0] * len(self.files)
        self._t0 = time.perf_counter()

    @property
    def names(self) -> list[str]:
        return list(self._where)

    def take(self, name: str) -> torch.Tensor:
        """The tensor `name` in the reader's dtype (floating tensors only) on its device; KeyError if absent."""
        i = self._where[name]
        t = self._open[i].get_tensor(name)
        self._bytes[i] += t.numel() * t.element_size()
        out = t.to(device=self.device, dtype=self.dtype if t.is_floating_point() else t.dtype)
        self._left[i] -= 1
        if self._left[i] == 0:
            log.info("read shard %d/%d %s: %.1f MiB, %.2f s since the load began", i + 1, len(self.files),
                     self.files[i].name, self._bytes[i] / 2**20, time.perf_counter() - self._t0)
        return out

    def close(self) -> None:
        log.info("read %d shards, %.1f MiB in %.2f s", len(self.files), sum(self._bytes) / 2**20,
                 time.perf_counter() - self._t0)
        self._open.clear()
