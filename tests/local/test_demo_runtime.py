"""``kubeloop up`` / ``kubeloop down`` as a user runs them: real processes, real ports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import psutil
import pytest

from kubeloop.local.ports import free_port
from kubeloop.local.wait import wait_until

pytestmark = pytest.mark.slow


def kubeloop(args: list[str], env: dict[str, str], timeout: float = 180):
    return subprocess.run(
        [sys.executable, "-m", "kubeloop.cli.main", *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_up_starts_a_healthy_runtime_and_down_stops_all_of_it(tmp_path):
    ports = {name: free_port() for name in ("prometheus", "router", "drift", "metrics")}
    home = tmp_path / "home"
    env = {
        **os.environ,
        "KUBELOOP_HOME": str(home),
        "KUBELOOP_OPERATOR_STATE_DIR": str(home / "runtime" / "operator"),
        "KUBELOOP_OPERATOR_PROMETHEUS_URL": f"http://127.0.0.1:{ports['prometheus']}",
        "KUBELOOP_OPERATOR_ROUTER_URL": f"http://127.0.0.1:{ports['router']}",
        "KUBELOOP_OPERATOR_DRIFT_SERVICE_URL": f"http://127.0.0.1:{ports['drift']}",
        "KUBELOOP_OPERATOR_METRICS_PORT": str(ports["metrics"]),
    }
    try:
        up = kubeloop(["up"], env)
        assert up.returncode == 0, up.stdout + up.stderr
        for name in ("prometheus", "drift", "router", "operator"):
            assert f"{name:<12} healthy" in up.stdout, up.stdout
        # Prometheus scrapes the parts it was given (file discovery), the router waits for a split
        targets = wait_targets(
            ports["prometheus"], {ports["drift"], ports["router"], ports["metrics"]}
        )
        assert len(targets) == 3
        assert httpx.get(f"http://127.0.0.1:{ports['router']}/readyz").status_code == 503
        again = kubeloop(["up"], env)  # adopts what runs instead of starting twins
        assert again.returncode == 0, again.stdout + again.stderr
        pids = {
            p.stem: json.loads(p.read_text())["pid"]
            for p in (home / "runtime" / "procs").glob("*.json")
        }
        assert set(pids) == {"prometheus", "drift", "router", "operator"}
    finally:
        down = kubeloop(["down"], env)
    assert down.returncode == 0 and "stopped 4 process(es)" in down.stdout, (
        down.stdout + down.stderr
    )
    assert not list((home / "runtime" / "procs").glob("*.json"))
    for pid in pids.values():  # gone, or a zombie nobody reaps (its parent, `up`, has exited)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert (home / "runtime" / "logs" / "drift.log").exists()


def wait_targets(port: int, wanted: set[int], timeout: float = 30) -> list[dict]:
    def up() -> list[dict] | None:
        active = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets").json()["data"]
        found = [t for t in active["activeTargets"]
                 if int(t["labels"]["instance"].rsplit(":", 1)[1]) in wanted]  # fmt: skip
        return (
            found if len(found) == len(wanted) and all(t["health"] == "up" for t in found) else None
        )

    return wait_until(up, timeout=timeout, interval=0.5, what=f"targets {sorted(wanted)} up")
