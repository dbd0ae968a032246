"""The local process supervisor with real child processes."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from kubeloop.local.ports import free_port
from kubeloop.local.supervisor import ProcessState, Supervisor, SupervisorError, process_state
from kubeloop.local.wait import wait_until


def test_start_health_adopt_after_restart_and_stop(tmp_path):
    sup = Supervisor(tmp_path)
    port = free_port()
    args = ["-m", "http.server", str(port), "--bind", "127.0.0.1"]
    try:
        record = sup.start(
            "web", args, health_url=f"http://127.0.0.1:{port}/", ports={"http": port}
        )
        sup.wait_healthy("web", timeout=20)
        # A new supervisor (a restarted operator) adopts the running child instead of a second one.
        again = Supervisor(tmp_path).start("web", args, health_url=f"http://127.0.0.1:{port}/")
        assert again.pid == record.pid
        assert [r.name for r in sup.list()] == ["web"]
        assert (tmp_path / "logs" / "web.log").exists()
    finally:
        assert sup.stop("web")
    assert sup.running("web") is None and sup.list() == []
    assert not sup.stop("web")


def test_child_that_exits_is_reported_with_its_log(tmp_path):
    sup = Supervisor(tmp_path)
    sup.start(
        "broken",
        ["-c", "import sys; print('bad config: port missing'); sys.exit(3)"],
        health_url="http://127.0.0.1:1/",
    )
    with pytest.raises(SupervisorError, match="bad config: port missing"):
        sup.wait_healthy("broken", timeout=20)
    sup.stop("broken")


def test_invalid_name_is_refused(tmp_path):
    with pytest.raises(SupervisorError, match="invalid process name"):
        Supervisor(tmp_path).start("../x", ["-c", "pass"])


@pytest.mark.parametrize(("code", "state"), [(0, ProcessState.FINISHED), (3, ProcessState.FAILED)])
def test_a_job_is_finished_or_failed_by_its_exit_status(tmp_path, code, state):
    sup = Supervisor(tmp_path)
    job = sup.start(
        "run-x", ["-c", f"import sys, time; time.sleep(0.5); sys.exit({code})"], job=True
    )
    assert sup.state("run-x") is ProcessState.RUNNING
    wait_until(lambda: sup.running("run-x") is None, timeout=20, what="the job to end")
    assert job.exit_status() == code
    assert sup.state("run-x") is state and state.ok is (code == 0)
    assert sup.stop("run-x") is False and sup.list() == []
    assert not (tmp_path / "procs" / "run-x.exit").exists()


def test_a_jobs_result_is_known_after_the_process_that_started_it_is_gone(tmp_path):
    """A restarted operator (or `kubeloop up`) reads a run's result though it never was its parent."""
    starter = (
        "import sys; from kubeloop.local.supervisor import Supervisor; "
        f"Supervisor({str(tmp_path)!r}).start('run-ok', ['-c', 'import time; time.sleep(1)'], job=True); "
        f"Supervisor({str(tmp_path)!r}).start('run-bad', ['-c', 'import time; time.sleep(1); 1/0'], job=True)"
    )
    subprocess.run([sys.executable, "-c", starter], check=True, timeout=60)
    other = Supervisor(tmp_path)
    assert other.state("run-ok") is ProcessState.RUNNING
    wait_until(
        lambda: all(other.running(n) is None for n in ("run-ok", "run-bad")),
        timeout=20,
        what="both jobs to end",
    )
    assert other.state("run-ok") is ProcessState.FINISHED
    assert other.state("run-bad") is ProcessState.FAILED
    assert other.job_exit_status("run-bad") == 1
    assert "ZeroDivisionError" in other.log_tail("run-bad")


def test_stopping_a_job_stops_it_and_its_wrapper(tmp_path):
    sup = Supervisor(tmp_path)
    job = sup.start("run-long", ["-c", "import time; time.sleep(60)"], job=True)
    children = wait_until(
        lambda: psutil.Process(job.pid).children(), timeout=10, what="the job under its wrapper"
    )
    assert sup.stop("run-long")
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
    assert sup.state("run-long") is None


@pytest.mark.parametrize(
    ("job", "running", "healthy", "exit_status", "state"),
    [
        (False, True, True, None, ProcessState.HEALTHY),
        (False, True, False, None, ProcessState.UNHEALTHY),
        (False, False, False, None, ProcessState.DOWN),
        (True, True, False, None, ProcessState.RUNNING),
        (True, False, False, 0, ProcessState.FINISHED),
        (True, False, False, 2, ProcessState.FAILED),
        (True, False, False, None, ProcessState.FAILED),  # killed with its wrapper: no status
    ],
)
def test_process_state(job, running, healthy, exit_status, state):
    assert process_state(job, running, healthy, exit_status) is state
