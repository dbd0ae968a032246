"""What a stage container is given: kubeloop's settings as ``KUBELOOP_*`` variables that
load back to the same sections, the host's network, the caller's uid, local paths bound
in place; and a clear error when no engine is reachable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kubeloop.cli import pipeline
from kubeloop.local.containers import (
    FORWARDED_FIELDS,
    FORWARDED_SECTIONS,
    ContainerApi,
    ContainerEngineError,
    container_api,
    settings_environment,
    stage_container_args,
)
from kubeloop.settings import KubeloopSettings


def _settings(**values) -> KubeloopSettings:
    return KubeloopSettings(**values)


def test_settings_travel_as_environment_and_load_back(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # no kubeloop.yaml here
    for key in list(os.environ):
        if key.startswith("KUBELOOP_") or key.startswith("AWS_"):
            monkeypatch.delenv(key)
    host = _settings(
        home=tmp_path / "home",
        model_name="churn",
        s3={"endpoint": "127.0.0.1:9123", "access_key": "a", "secret_key": "s", "secure": True},
        training={"epochs": 3, "seed": 11},
        gate={"champion_tolerance": 0.05},
    )
    env = settings_environment(host)
    assert not any(
        k.startswith(("KUBELOOP_HOME", "KUBELOOP_REGISTRY_URI", "KUBELOOP_FEAST")) for k in env
    )
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    inside = KubeloopSettings()
    for name in FORWARDED_SECTIONS + FORWARDED_FIELDS:
        assert getattr(inside, name) == getattr(host, name), name
    assert inside.home != host.home  # the container keeps its own paths


def test_stage_container_args_bind_paths_in_place(tmp_path) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    api = ContainerApi("unix:///run/x.sock", "podman", rootless=False)
    args = stage_container_args(api, _settings(home=tmp_path), [registry, registry / "."])
    assert args["network_mode"] == "host"
    assert args["entrypoint"] == [""]  # the component's command is the whole command line
    assert args["user"] == f"{os.getuid()}:{os.getgid()}"
    assert [(m["Source"], m["Target"], m["Type"]) for m in args["mounts"]] == [
        (str(registry), str(registry), "bind")
    ]
    assert args["environment"]["HOME"] == "/tmp"
    rootless = stage_container_args(
        ContainerApi("unix:///run/x.sock", "podman", rootless=True), _settings(home=tmp_path), []
    )
    assert rootless["user"] == "0:0"


def test_an_unreachable_docker_host_is_named(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    with (
        pytest.raises(
            ContainerEngineError, match=r"DOCKER_HOST=unix://.*nothing.sock does not answer"
        ),
        container_api(tmp_path),
    ):
        pass


def test_containers_option_needs_local_and_says_so() -> None:
    result = CliRunner().invoke(
        pipeline.app, ["run", "training", "--host", "http://kfp:8888", "--containers"]
    )
    assert result.exit_code == 2
    assert "--containers runs the stages here: use it with --local" in result.output
