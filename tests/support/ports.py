"""TCP ports on 127.0.0.1 for the servers a test starts."""

import random
import socket
from contextlib import ExitStack
from pathlib import Path

from titanium.config import ServiceName
from titanium.services.registry import SERVICES

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10_000  # above the well-known and registered ports servers here may use


def _below_ephemeral() -> range | None:
    """Ports under the kernel's outgoing-connection range, or None where it is unknown."""
    try:
        first = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return range(LOWEST, first) if first - LOWEST >= 1_000 else None


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports nothing uses right now.

    Every probe stays bound until all are picked: probing one at a time lets the
    kernel hand the same port out twice, and two services of one stack then race
    for it. Ports come from below the ephemeral range where the kernel says what
    it is, so an outgoing connection made meanwhile cannot take one before its
    server binds it.
    """
    candidates = _below_ephemeral()
    with ExitStack() as probes:
        ports: list[int] = []
        while len(ports) < count:
            probe = probes.enter_context(socket.socket())
            port = random.choice(candidates) if candidates else 0
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken; another draw
            ports.append(int(probe.getsockname()[1]))
    return ports


def stack_ports() -> dict[ServiceName, int]:
    """A distinct free port for each service."""
    return dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
