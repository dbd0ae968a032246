"""The local process supervisor with real child processes."""

from __future__ import annotations

import pytest

from kubeloop.local.ports import free_port
from kubeloop.local.supervisor import Supervisor, SupervisorError


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
