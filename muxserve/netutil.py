"""Small network helpers."""

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (for configs that must name ports up front)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
