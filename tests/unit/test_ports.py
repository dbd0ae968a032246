"""Free loopback ports for the local runtime's processes."""

from __future__ import annotations

import socket

from kubeloop.local.ports import free_ports
from kubeloop.local.runtime import RuntimePorts


def test_ports_chosen_together_are_distinct_and_bindable():
    for _ in range(50):
        ports = free_ports(8)
        assert len(set(ports)) == 8
    # Chosen one after another, a thousand ports repeat one nearly always (20 of 20 trials
    # here); held together they cannot.
    assert len(set(free_ports(1000))) == 1000
    for port in free_ports(4):
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # nothing holds it any more


def test_the_runtimes_ports_are_distinct():
    ports = RuntimePorts.free()
    assert len({ports.prometheus, ports.router, ports.drift, ports.operator_metrics}) == 4
