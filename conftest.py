"""Fixtures shared by every test folder (tests/, components/*/tests, pipelines, operators)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from kubeloop.settings import get_settings
    from kubeloop.training.ray_runtime import start_local_head, stop_local_head

    home = Path(tmp_path_factory.getbasetemp()) / "kubeloop-ray-session"
    head = start_local_head(home)
    previous = os.environ.get("KUBELOOP_RAY_ADDRESS")
    os.environ["KUBELOOP_RAY_ADDRESS"] = head.address
    get_settings.cache_clear()
    try:
        yield head.address
    finally:
        if previous is None:
            os.environ.pop("KUBELOOP_RAY_ADDRESS", None)
        else:
            os.environ["KUBELOOP_RAY_ADDRESS"] = previous
        get_settings.cache_clear()
        stop_local_head(home)


@pytest.fixture(scope="session")
def stage_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The warm stage server, started by the local runtime's launcher for its ``stages``
    part (``kubeloop.local.stages``): its Unix socket, once it answers."""
    from kubeloop.local.runtime import STAGES, LocalRuntime
    from kubeloop.local.stages import wait_ready

    runtime = LocalRuntime(Path(tmp_path_factory.getbasetemp()) / "kubeloop-stages-session",
                           warm_stages=True)  # fmt: skip
    service = runtime.start_part(STAGES)
    try:
        wait_ready(runtime.stage_socket, timeout=180, detail=service.log_tail)
        yield runtime.stage_socket
    finally:
        service.stop()
