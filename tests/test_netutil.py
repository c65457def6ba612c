"""free_ports: distinct ports, and a span whose every port (and its shifted copies) is free."""

import socket

from muxserve.netutil import free_ports
from tests.meshconf import WORKER_PORTS


def test_ports_are_distinct_and_a_span_is_free_at_every_offset():
    ports = free_ports(("redis", "router", "worker"), spans={"worker": WORKER_PORTS})
    count, offsets = WORKER_PORTS
    span = [ports["worker"] + o + i for o in offsets for i in range(count)]
    assert len(set(ports.values())) == 3 and not {ports["redis"], ports["router"]} & set(span)
    socks = []
    try:
        for p in span:  # every port of the span binds now
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", p))
    finally:
        for s in socks:
            s.close()

