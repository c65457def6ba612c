"""Small network helpers."""

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (for configs that must name ports up front)."""
    return free_ports(("port",), host)["port"]


def free_ports(names, host: str = "127.0.0.1", spans: dict | None = None, tries: int = 100) -> dict[str, int]:
    """A port per name, free and distinct a moment ago: every chosen port stays bound until all are chosen.

    spans: {name: (count, offsets)}: that name's port p is one where p + o + i is free for every i < count and
    offset o (a mesh's workers listen on worker.port + i and serve metrics above those: tests/meshconf.py).
    Raises OSError when no such port turns up in `tries` draws."""
    spans, held, out = spans or {}, [], {}
    try:
        for name in names:
            count, offsets = spans.get(name, (1, (0,)))
            for _ in range(tries):
                got = _bind_range(host, count, offsets)
                if got:
                    out[name] = got[0].getsockname()[1]
                    held += got
                    break
            else:
                raise OSError(f"no port on {host} with {count} free ports at offsets {offsets} for {name!r}")
        return out
    finally:
        for s in held:
            s.close()


def _bind_range(host: str, count: int, offsets) -> list:
    """Sockets bound to p + o + i (p: a port the kernel picked), or [] (all closed) when one is taken."""
    first = socket.socket()
    first.bind((host, 0))
    base, got = first.getsockname()[1], [first]
    try:
        for o in offsets:
            for i in range(count):
                if o or i:
                    s = socket.socket()
                    got.append(s)
                    s.bind((host, base + o + i))
        return got
    except (OSError, OverflowError):
        for s in got:
            s.close()
        return []
