"""Free loopback ports for the processes the local runtime starts.

A port is chosen now and bound later, by a server that may take seconds to import its
modules first. The OS picks the local ports of outgoing connections (every scrape, every
HTTP client) from its ephemeral range, so a port chosen there can be taken by one of them
in between, and the server's bind then fails ("address already in use"). Ports are
therefore drawn at random from outside that range, and checked bindable.

They are also drawn above the ports a local Ray head keeps for itself: its workers bind
ports from 10002 to 19999 (Ray's default worker range), and ``ray start`` refuses a head
port inside that range ("is used by other components").
"""

from __future__ import annotations

import random
import socket
from contextlib import ExitStack
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 20000  # below: well-known services' ports and Ray's worker ports (10002-19999)
HIGHEST = 65535


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The OS's range for outgoing connections' local ports (Linux's default without the
    file)."""
    try:
        low, high = (int(v) for v in path.read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def candidate_ports(ephemeral: tuple[int, int]) -> range:
    """Ports outside ``ephemeral``: the larger of the spans below and above it, from
    ``LOWEST``; empty when neither is left."""
    low, high = ephemeral
    below = range(LOWEST, max(low, LOWEST))
    above = range(max(high + 1, LOWEST), HIGHEST + 1)
    return max(below, above, key=len)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, outside the ephemeral range."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: every socket stays bound until all are chosen, so no
    port is handed out twice (one port after another could repeat). Drawn at random from
    outside the ephemeral range (see the module's docstring); the OS picks the rest when
    that range is too small or too full."""
    candidates = candidate_ports(ephemeral_range())
    tries = min(len(candidates), 4 * count + 64) if len(candidates) >= 2 * count else 0
    with ExitStack() as stack:
        chosen: list[int] = []
        for port in random.sample(candidates, tries):
            if len(chosen) == count:
                break
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use, or a connection of it still closing
                s.close()
                continue
            stack.enter_context(s)
            chosen.append(port)
        while len(chosen) < count:
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            chosen.append(s.getsockname()[1])
        return chosen
