"""Everything kubeloop starts locally listens on loopback only.

Ray's APIs, the predictor, the router and the drift service are unauthenticated (for Ray see
CVE-2023-48022), so a socket bound to a routable address or to every interface would
hand the machine to anyone on its network. These tests start the real processes and
read their listening sockets with psutil.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
import textwrap

import psutil
import pytest

from kubeloop.local.drift import start_drift_service
from kubeloop.local.prometheus import start_prometheus
from kubeloop.local.servers import start_predictor, start_router
from kubeloop.local.supervisor import Supervisor
from kubeloop.registry import ModelRegistry
from kubeloop.training.quick import publish_quick_version

pytestmark = pytest.mark.slow
MODEL = "fraud-detector"


def is_loopback(host: str) -> bool:
    address = ipaddress.ip_address(host.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # "::ffff:127.0.0.1" from a dual-stack socket
    return address.is_loopback


def listening_sockets(pid: int) -> list[tuple[int, str, str, int]]:
    """(pid, process name, host, port) of every listening TCP or bound UDP socket of
    ``pid`` and its descendants."""
    root = psutil.Process(pid)
    found = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            # psutil >= 6 names it net_connections; 5.9 only has connections
            conns = getattr(proc, "net_connections", proc.connections)(kind="inet")
            name = proc.name()
        except psutil.NoSuchProcess:
            continue
        for conn in conns:
            tcp_listen = conn.type == socket.SOCK_STREAM and conn.status == "LISTEN"
            udp_bound = conn.type == socket.SOCK_DGRAM and not conn.raddr
            if tcp_listen or udp_bound:
                found.append((proc.pid, name, conn.laddr.ip, conn.laddr.port))
    return found


def ray_start_pid(address: str) -> int:
    """The ``ray start --head`` process serving ``address``: the root of the head's tree."""
    flag = f"--port={address.rpartition(':')[2]}"
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "start" in cmdline and "--head" in cmdline and flag in cmdline:
            return proc.pid
    raise AssertionError(f"no ray start --head process with {flag}")


def exposed(sockets: list[tuple[int, str, str, int]]) -> list[tuple[int, str, str, int]]:
    return [s for s in sockets if not is_loopback(s[2])]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True), ("0.0.0.0", False),
     ("::", False), ("192.0.2.2", False), ("::ffff:192.0.2.2", False)],
)  # fmt: skip
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_local_ray_head_listens_on_loopback_only(ray_head, tmp_path):
    # A driver in a fresh process runs a task, so the head's workers (and their
    # sockets) exist too; the driver's connect() takes the same loopback path.
    script = textwrap.dedent(
        f"""
        import ray
        from kubeloop.training.ray_runtime import connect
        connect(address={ray_head!r})
        assert ray.get(ray.remote(lambda: 1).remote()) == 1
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=180, cwd=tmp_path)
    sockets = listening_sockets(ray_start_pid(ray_head))
    names = {name for _, name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets
    assert exposed(sockets) == [], f"Ray head sockets not on loopback: {exposed(sockets)}"


def test_servers_listen_on_loopback_only(tmp_path):
    """A predictor (kserve REST and gRPC), the router, the drift service and Prometheus."""
    registry = ModelRegistry(str(tmp_path / "registry"))
    publish_quick_version(registry, MODEL, seed=1, n_accounts=60, days=3.0)
    with Supervisor(tmp_path / "runtime") as sup:
        services = [
            start_predictor(sup, MODEL, "v1", registry.uri),
            start_router(sup, tmp_path / "split.json", registry_uri=registry.uri),
            start_drift_service(sup, registry.uri),
            start_prometheus(sup, tmp_path / "prometheus"),
        ]
        for service in services:
            sockets = listening_sockets(service.pid)
            ports = {port for *_, port in sockets}
            assert set(service.ports.values()) <= ports, (service.name, sockets)
            assert exposed(sockets) == [], f"{service.name} not on loopback: {exposed(sockets)}"
