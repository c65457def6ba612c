"""Spatial partitioning baseline: each LLM alone on the fewest devices that hold it.

Units are packed onto nodes first-fit decreasing (optimal for power-of-two sizes). Devices left
idle then go, one doubling at a time, to the LLM whose estimate gains the most from a unit twice
as large (while the table measures that size and the packing still fits), so the baseline is not
handicapped by idle devices.
"""

from __future__ import annotations


def pack(sizes: dict[str, int], nodes: int, dpn: int) -> list[tuple[int, int, tuple[str, ...]]] | None:
    """[(node, size, (name,))] placing each LLM's unit on a node, or None when they do not fit."""
    free = [dpn] * nodes
    out = []
    for name, n in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])):
        node = next((i for i, f in enumerate(free) if f >= n), None)
        if node is None:
            return None
        free[node] -= n
        out.append((node, n, (name,)))
    return out


def spatial_layout(planner) -> tuple[float, list] | None:
    """(served req/s, layout) of the spatial baseline for a search.Planner, or None if it cannot pack."""
    sizes = dict(planner.min_devices)
    if pack(sizes, planner.nodes, planner.dpn) is None:
        return None
    while (step := _best_doubling(planner, sizes)) is not None:
        sizes[step] *= 2
    layout = pack(sizes, planner.nodes, planner.dpn)
    return sum(planner.unit_estimate(n, names, "spatial").served for _, n, names in layout), layout


def _best_doubling(planner, sizes: dict[str, int]) -> str | None:
    best, best_gain = None, 1e-9
    for name, n in sorted(sizes.items()):
        if 2 * n > planner.dpn or pack({**sizes, name: 2 * n}, planner.nodes, planner.dpn) is None:
            continue
        after = planner.unit_estimate(2 * n, (name,), "spatial")
        if after is None:
            continue
        gain = after.served - planner.unit_estimate(n, (name,), "spatial").served
        if gain > best_gain:
            best, best_gain = name, gain
    return best
