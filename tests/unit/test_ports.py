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


def test_ports_are_drawn_outside_the_ephemeral_range(tmp_path):
    """Outgoing connections take their local ports from the ephemeral range: a port chosen
    there could be taken before its server binds it."""
    from kubeloop.local.ports import candidate_ports, ephemeral_range

    low, high = ephemeral_range()
    assert all(port in candidate_ports((low, high)) for port in free_ports(200))
    # the larger span outside the range, above Ray's worker ports (a head refuses a port
    # among them)
    assert candidate_ports((32768, 60999)) == range(20000, 32768)
    assert candidate_ports((1024, 40000)) == range(40001, 65536)
    assert candidate_ports((1024, 65535)) == range(0)  # none left: the OS picks
    (tmp_path / "range").write_text("not a range\n")
    assert ephemeral_range(tmp_path / "range") == (32768, 60999)
