"""The pool's memory, shared without copies: a POSIX shared-memory segment on CPU, CUDA IPC on GPU.

`create_segment(num_blocks, block_size, head_dim, dtype, device)` -> (PoolHandle, tensor) allocates
the zeroed, contiguous pool tensor `[num_blocks, 2, block_size, head_dim]` (layout owned by
services/worker/engine/pool.py) in memory other processes can map; `attach(handle)` -> the same
memory as a tensor of that shape in another process (no copy). The SharedMemory objects are kept
alive in this module (a tensor made by torch.frombuffer must not outlive its buffer);
`destroy_segment(handle)` unlinks the segment (memmgr at shutdown) and `detach(handle)` drops an
attachment. Attaching processes do not register the segment with Python's resource tracker, so
their exit never unlinks memmgr's pool; memmgr's own registration unlinks it if memmgr dies.
The CUDA path (torch's CUDA IPC reductions) is written but UNTESTED here: this host has no GPU.
"""

from __future__ import annotations

import os
import pickle
import uuid
from multiprocessing import resource_tracker, shared_memory

import torch

from services.memmgr.types import DTYPES, PoolHandle

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_open: dict[str, shared_memory.SharedMemory] = {}  # segment name -> the mapping kept alive
_cuda_pools: dict[str, torch.Tensor] = {}           # label -> pool tensor (the IPC producer keeps it)


def pool_shape(num_blocks: int, block_size: int, head_dim: int) -> tuple[int, int, int, int]:
    return (num_blocks, 2, block_size, head_dim)  # same as services/worker/engine/pool.pool_shape


def segment_bytes(num_blocks: int, block_size: int, head_dim: int, dtype: str) -> int:
    return num_blocks * 2 * block_size * head_dim * TORCH_DTYPES[dtype].itemsize


def create_segment(num_blocks: int, block_size: int, head_dim: int, dtype: str | torch.dtype,
                   device: str = "cpu") -> tuple[PoolHandle, torch.Tensor]:
    """Allocate a zeroed shared pool once; returns its handle and the tensor."""
    dtype = _dtype_name(dtype)
    if min(num_blocks, block_size, head_dim) < 1:
        raise ValueError(f"pool dims must be >= 1, got {num_blocks=} {block_size=} {head_dim=}")
    if str(device).startswith("cuda"):
        return _create_cuda(num_blocks, block_size, head_dim, dtype, device)
    size = segment_bytes(num_blocks, block_size, head_dim, dtype)
    _check_shm_space(size)
    name = f"muxserve-kv-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    shm = shared_memory.SharedMemory(name=name, create=True, size=size)  # zero-filled by ftruncate
    _open[name] = shm
    handle = PoolHandle("shm", name, num_blocks, block_size, head_dim, dtype)
    return handle, _view(shm, handle)


def attach(handle: PoolHandle) -> torch.Tensor:
    """The pool of `handle` as a tensor [num_blocks, 2, block_size, head_dim] sharing its memory."""
    if handle.kind == "cuda_ipc":
        return _attach_cuda(handle)
    if handle.kind != "shm":
        raise ValueError(f"unknown pool handle kind {handle.kind!r}")
    shm = _open.get(handle.name)
    if shm is None:
        shm = shared_memory.SharedMemory(name=handle.name, create=False)
        resource_tracker.unregister(shm._name, "shared_memory")  # an attacher never unlinks it
        _open[handle.name] = shm
    need = segment_bytes(handle.num_blocks, handle.block_size, handle.head_dim, handle.dtype)
    if shm.size < need:
        raise ValueError(f"segment {handle.name} has {shm.size} bytes, the handle needs {need}")
    return _view(shm, handle)


def detach(handle: PoolHandle) -> None:
    """Forget this process's mapping (tensors from attach must be gone, else it stays mapped)."""
    shm = _open.pop(handle.name, None)
    if shm is not None:
        _close(shm)


def destroy_segment(handle: PoolHandle) -> None:
    """memmgr at shutdown: unlink the segment (mappings elsewhere stay valid until they close)."""
    if handle.kind == "cuda_ipc":
        _cuda_pools.pop(handle.name, None)
        return
    shm = _open.pop(handle.name, None) or shared_memory.SharedMemory(name=handle.name, create=False)
    try:
        shm.unlink()
    except FileNotFoundError:
        pass
    _close(shm)


def _view(shm: shared_memory.SharedMemory, h: PoolHandle) -> torch.Tensor:
    n = segment_bytes(h.num_blocks, h.block_size, h.head_dim, h.dtype)
    raw = torch.frombuffer(shm.buf, dtype=torch.uint8, count=n)  # [bytes], no copy
    return raw.view(TORCH_DTYPES[h.dtype]).view(pool_shape(h.num_blocks, h.block_size, h.head_dim))


def _close(shm: shared_memory.SharedMemory) -> None:
    try:
        shm.close()
    except BufferError:
        pass  # tensors still view the buffer; the mapping goes when they do (or at exit)


def _check_shm_space(size: int) -> None:
    """A segment bigger than /dev/shm's free space maps fine and then SIGBUSes on first touch."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if size > free:
        raise MemoryError(f"KV pool needs {size / 2**20:.1f} MiB of shared memory but /dev/shm has "
                          f"{free / 2**20:.1f} MiB free (docker: raise shm_size)")


def _dtype_name(dtype: str | torch.dtype) -> str:
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return dtype


def _create_cuda(num_blocks: int, block_size: int, head_dim: int, dtype: str,
                 device: str) -> tuple[PoolHandle, torch.Tensor]:  # pragma: no cover - needs a GPU
    """UNTESTED (no GPU here): the pool in device memory, exported with torch's CUDA IPC reduction."""
    from torch.multiprocessing.reductions import reduce_tensor

    pool = torch.zeros(pool_shape(num_blocks, block_size, head_dim), dtype=TORCH_DTYPES[dtype], device=device)
    _rebuild, args = reduce_tensor(pool)  # (rebuild_cuda_tensor, picklable args incl. the IPC handle)
    label = f"cuda-kv-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    _cuda_pools[label] = pool
    return PoolHandle("cuda_ipc", label, num_blocks, block_size, head_dim, dtype, pickle.dumps(args)), pool


def _attach_cuda(handle: PoolHandle) -> torch.Tensor:  # pragma: no cover - needs a GPU
    """UNTESTED (no GPU here): open the producer's CUDA IPC handle in this process."""
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    if handle.name in _cuda_pools:
        return _cuda_pools[handle.name]
    return rebuild_cuda_tensor(*pickle.loads(handle.payload))
