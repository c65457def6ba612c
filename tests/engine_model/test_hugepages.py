"""Weights on transparent huge pages (CPU, Linux): same values, advised mappings, honest byte counts."""

from __future__ import annotations

import pytest
import torch

from muxserve.tiny import write_tiny_checkpoint
from services.worker.engine.hugepages import HUGE_PAGE, huge_copy, thp_mode
from services.worker.engine.loader import load_weights

THP = thp_mode() in ("always", "madvise")


def smaps_entry(ptr: int) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping that holds address `ptr`."""
    entry, inside = {}, False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            if inside:
                break
            inside = lo <= ptr < hi
        elif inside:
            key, _, value = line.partition(":")
            entry[key] = value.strip()
    return entry


def test_huge_copy_keeps_values_and_advises_the_mapping():
    t = torch.randn(1024, 1024)  # 4 MiB
    h = huge_copy(t)
    assert torch.equal(h, t) and h.is_contiguous()
    if not THP:
        assert h is t  # the kernel has no THP for us: nothing to gain from a copy
        return
    assert h is not t and h.data_ptr() % HUGE_PAGE == 0
    assert smaps_entry(h.data_ptr()).get("THPeligible") == "1"
    small = torch.randn(16)
    assert huge_copy(small) is small  # under one huge page: returned as it is


@pytest.mark.skipif(not THP, reason="the kernel's THP mode is never")
def test_loaded_weights_on_huge_pages_count_their_own_bytes(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "m", "llama", hidden_size=512, num_layers=2, num_heads=8,
                                 num_kv_heads=4, intermediate_size=1376)
    spec, w = load_weights(path)
    spec4k, w4k = load_weights(path, huge_pages=False)
    big = w["layers.0.w13"]  # [512, 2752] fp32: 5.6 MB
    assert big.data_ptr() % HUGE_PAGE == 0 and smaps_entry(big.data_ptr()).get("THPeligible") == "1"
    if thp_mode() == "madvise":  # only advised memory is eligible: the 4 KiB load is not
        assert smaps_entry(w4k["layers.0.w13"].data_ptr()).get("THPeligible") == "0"
    assert all(torch.equal(w[k], w4k[k]) for k in w)
    assert spec.weight_bytes == spec4k.weight_bytes == sum(t.numel() * t.element_size() for t in w.values())
