"""The local runtime keeps its parts running: the watchdog restarts what dies, with real processes."""

from __future__ import annotations

import os
import signal
import socket

import httpx
import psutil
import pytest

from kubeloop.local.restarts import RestartPolicy
from kubeloop.local.runtime import PARTS, WATCHDOG, LocalRuntime, RuntimePorts, check_started
from kubeloop.local.supervisor import ProcessState, Supervisor
from kubeloop.local.wait import wait_until

pytestmark = pytest.mark.slow

# The second exit in a row waits 2 s: time for the test to take Prometheus's port first.
POLICY = RestartPolicy(max_restarts=2, backoff_seconds=1, max_backoff_seconds=2, stable_seconds=60)


@pytest.fixture
def runtime(tmp_path):
    runtime = LocalRuntime(tmp_path / "home", RuntimePorts.free(), restarts=POLICY)
    try:
        runtime.start([])
        yield runtime
    finally:
        runtime.stop()


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def bound(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    sock.listen()
    return True


def kill(runtime: LocalRuntime, name: str) -> int:
    pid = runtime.supervisor.running(name).pid
    os.killpg(pid, signal.SIGKILL)
    return pid


def back(runtime: LocalRuntime, name: str, old_pid: int, timeout: float = 30) -> int:
    def restarted() -> int | None:
        record = runtime.supervisor.running(name)
        return (
            record.pid
            if record and record.pid != old_pid and runtime.supervisor.healthy(name)
            else None
        )

    return wait_until(restarted, timeout=timeout, what=f"{name} restarted and healthy",
                      detail=lambda: runtime.supervisor.log_tail(WATCHDOG))  # fmt: skip


def test_killed_parts_come_back_and_a_crash_loop_is_given_up(runtime):
    sup = runtime.supervisor
    assert set(runtime.status()) == {*PARTS, WATCHDOG}
    assert all(part.state is ProcessState.HEALTHY for part in runtime.status().values())

    # SIGKILL the operator and Prometheus: both are restarted and answer again.
    old = {name: kill(runtime, name) for name in ("operator", "prometheus")}
    new = {name: back(runtime, name, pid) for name, pid in old.items()}
    assert answers(f"{runtime.url('prometheus')}/-/ready")
    assert answers(f"{runtime.url('operator')}/metrics")
    status = runtime.status()
    assert (status["operator"].restarts, status["prometheus"].restarts) == (1, 1)
    assert str(status["operator"]) == "healthy (restarted 1x)"
    assert status["router"].restarts == 0 and status["drift"].restarts == 0
    log = sup.log_tail(WATCHDOG, None)
    assert (
        "operator exited" in log and f"operator restarted (pid {new['operator']}, restart 1)" in log
    )
    check_started(runtime)

    # A part that cannot start (its port taken) crashes at once, again and again: given up.
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        kill(runtime, "prometheus")
        # Its closing connections may hold the port for a moment; the restart is 2 s away.
        wait_until(lambda: bound(squatter, runtime.ports.prometheus), timeout=1.5,
                   interval=0.05, what="the test to take Prometheus's port")  # fmt: skip
        gave_up = wait_until(
            lambda: runtime.status()["prometheus"].gave_up and runtime.status()["prometheus"],
            timeout=30, what="the watchdog to give prometheus up",
            detail=lambda: sup.log_tail(WATCHDOG),
        )  # fmt: skip
        # The kill above counts too (it ran under stable_seconds): 2 restarts, then a third exit.
        assert not gave_up.ok and str(gave_up).startswith("GAVE UP after 2 restart(s)")
        assert "exited with status 1" in gave_up.detail
        assert "address already in use" in gave_up.detail
        assert "prometheus gave up after 2 restart(s) in a row" in sup.log_tail(WATCHDOG, None)
        with pytest.raises(Exception, match="not healthy: prometheus"):
            check_started(runtime)
    # Starting the runtime again (`kubeloop up`) brings it back, and the watchdog watches it again.
    runtime.start([])
    assert runtime.status()["prometheus"].ok
    pid = runtime.supervisor.running("prometheus").pid
    wait_until(lambda: runtime.restart_states()["prometheus"].pid == pid, timeout=10,
               what="the watchdog to watch prometheus again")  # fmt: skip
    kill(runtime, "prometheus")
    back(runtime, "prometheus", pid)
    assert runtime.supervisor.running(WATCHDOG) is not None


def test_status_reports_runs_by_result_and_stop_leaves_nothing_running(runtime):
    # Retraining runs as the operator starts them (one-shot jobs), from another supervisor.
    operator_side = Supervisor(runtime.root)
    operator_side.start("run-ok", ["-c", "print('registered v2')"], job=True)
    operator_side.start("run-bad", ["-c", "raise SystemExit(2)"], job=True)
    wait_until(lambda: all(operator_side.running(n) is None for n in ("run-ok", "run-bad")),
               timeout=30, what="the runs to end")  # fmt: skip
    # The runtime as `kubeloop up` sees it after a restart of everything that reads it.
    status = LocalRuntime(runtime.home, runtime.ports).status()
    assert status["run-ok"].state is ProcessState.FINISHED and status["run-ok"].ok
    assert str(status["run-ok"]) == "finished"
    assert status["run-bad"].state is ProcessState.FAILED and str(status["run-bad"]) == "FAILED"
    assert all(status[name].state is ProcessState.HEALTHY for name in (*PARTS, WATCHDOG))
    check_started(runtime)  # runs do not make the runtime unhealthy, finished or failed

    pids = {r.name: r.pid for r in runtime.supervisor.list() if runtime.supervisor.running(r.name)}
    assert set(pids) == {*PARTS, WATCHDOG}
    processes = {
        p
        for pid in pids.values()
        for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    }
    stopped = runtime.stop()
    assert stopped[:2] == [WATCHDOG, "operator"] and set(stopped) == set(pids)
    assert runtime.supervisor.list() == [] and not runtime.watchdog_state_path.exists()
    running = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert running == []
