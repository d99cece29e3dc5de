"""TCP ports on 127.0.0.1."""

import socket
from contextlib import ExitStack

from titanium.config import ServiceName
from titanium.services.registry import SERVICES


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports nothing listens on right now.

    Every probe stays bound until all are picked: probing one at a time lets the
    kernel hand the same port out twice, and two services of one stack then race
    for it (one answers for both, the other exits).
    """
    with ExitStack() as probes:
        ports = []
        for _ in range(count):
            probe = probes.enter_context(socket.socket())
            probe.bind(("127.0.0.1", 0))
            ports.append(int(probe.getsockname()[1]))
    return ports


def stack_ports() -> dict[ServiceName, int]:
    """A distinct free port for each service."""
    return dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
