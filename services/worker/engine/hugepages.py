"""Transparent huge pages for big CPU tensors (the weights), so a decode step streams them with few TLB misses.

`huge_copy(t)` returns a copy of `t` in a fresh anonymous mapping, 2 MiB aligned and advised
MADV_HUGEPAGE, when that can help: Linux, CPU tensor of at least 2 MiB, and the kernel's THP mode
(/sys/kernel/mm/transparent_hugepage/enabled) `madvise` or `always`. Otherwise it returns `t` itself.
A batch-1 decode step of the ~350M Llama ran 2-15% faster with its weights in huge pages
(docs/benchmarks.md, "decode bandwidth").

Shared-memory tensors (process jobs: loader.share_weights) live in shmem, which gets huge pages only
where /sys/kernel/mm/transparent_hugepage/shmem_enabled allows it; `share_memory_()` copies a tensor
out of its huge pages into shmem.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import sys
from pathlib import Path

import torch

HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode() -> str:
    """The kernel's THP mode ('always', 'madvise', 'never'), or 'never' where there is none."""
    try:
        text = THP_ENABLED.read_text()
    except OSError:
        return "never"
    return text[text.find("[") + 1: text.find("]")] if "[" in text else "never"


@functools.cache
def _libc_madvise():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.madvise


def _madvise(ptr: int, length: int) -> bool:
    return _libc_madvise()(ptr, length, MADV_HUGEPAGE) == 0


def huge_copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of `t` advised onto huge pages, or `t` itself where that cannot help (above)."""
    nbytes = t.numel() * t.element_size()
    if (t.device.type != "cpu" or nbytes < HUGE_PAGE or not sys.platform.startswith("linux")
            or thp_mode() not in ("always", "madvise")):
        return t
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = torch.frombuffer(region, dtype=torch.uint8)  # keeps `region` alive as long as any view of it
    start = (-raw.data_ptr()) % HUGE_PAGE
    raw = raw[start: start + nbytes]
    if not _madvise(raw.data_ptr(), nbytes):  # before the first touch: the copy faults huge pages in
        return t
    return raw.view(t.dtype).view(t.shape).copy_(t)
