"""``kubeloop up`` / ``kubeloop down`` as a user runs them: real processes, real ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import psutil
import pytest

from kubeloop.local.ports import free_port
from kubeloop.local.supervisor import Supervisor
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
        for name in ("prometheus", "drift", "router", "stages", "operator", "watchdog"):
            assert f"{name:<12} healthy" in up.stdout, up.stdout
        # Prometheus scrapes the parts it was given (file discovery), the router waits for a split
        targets = wait_targets(
            ports["prometheus"], {ports["drift"], ports["router"], ports["metrics"]}
        )
        assert len(targets) == 3
        assert httpx.get(f"http://127.0.0.1:{ports['router']}/readyz").status_code == 503
        # The operator and Prometheus, killed, come back on their own and answer again.
        started = recorded_pids(home)
        for name in ("operator", "prometheus"):
            os.killpg(started[name], signal.SIGKILL)
        for name, port, path in (("operator", ports["metrics"], "/metrics"),
                                 ("prometheus", ports["prometheus"], "/-/ready")):  # fmt: skip
            wait_until(
                lambda name=name, url=f"http://127.0.0.1:{port}{path}": (
                    recorded_pids(home).get(name) not in (None, started[name]) and answers(url)
                ),
                timeout=60, what=f"{name} restarted",
            )  # fmt: skip
        # A retraining run the operator started has finished: reported as such, not unhealthy.
        Supervisor(home / "runtime").start("run-done", ["-c", "print('v2')"], job=True)
        wait_until(lambda: Supervisor(home / "runtime").running("run-done") is None,
                   timeout=30, what="the run to end")  # fmt: skip
        again = kubeloop(["up"], env)  # adopts what runs instead of starting twins
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"{'run-done':<12} finished" in again.stdout and "NOT" not in again.stdout
        assert f"{'operator':<12} healthy (restarted 1x)" in again.stdout, again.stdout
        pids = recorded_pids(home)
        assert set(pids) == {
            "prometheus",
            "drift",
            "router",
            "stages",
            "operator",
            "watchdog",
            "run-done",
        }
        processes = [psutil.Process(pid) for name, pid in pids.items() if name != "run-done"]
    finally:
        down = kubeloop(["down"], env)
    assert down.returncode == 0 and "stopped 6 process(es)" in down.stdout, (
        down.stdout + down.stderr
    )
    assert down.stdout.startswith("stopped 6 process(es): watchdog, operator")
    assert not list((home / "runtime" / "procs").glob("*"))
    # gone, or a zombie nobody reaps (its parent, `up`, has exited)
    assert not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert (home / "runtime" / "logs" / "drift.log").exists()


def recorded_pids(home) -> dict[str, int]:
    return {
        p.stem: json.loads(p.read_text())["pid"]
        for p in (home / "runtime" / "procs").glob("*.json")
    }


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_targets(port: int, wanted: set[int], timeout: float = 30) -> list[dict]:
    def up() -> list[dict] | None:
        active = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets").json()["data"]
        found = [t for t in active["activeTargets"]
                 if int(t["labels"]["instance"].rsplit(":", 1)[1]) in wanted]  # fmt: skip
        return (
            found if len(found) == len(wanted) and all(t["health"] == "up" for t in found) else None
        )

    return wait_until(up, timeout=timeout, interval=0.5, what=f"targets {sorted(wanted)} up")
