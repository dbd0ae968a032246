"""Predictor and router processes under the supervisor (local runtime, operator, tests, bench).

Each launcher builds its command line here and nowhere else; ``launcher`` prefixes it
(``taskset -c 0`` pins a benchmark's server to a core).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubeloop.local.ports import free_port
from kubeloop.local.supervisor import Service, Supervisor


def predictor_name(model_name: str, version: str) -> str:
    """The supervisor name of a version's predictor process."""
    return f"predictor-{model_name}-{version}"


def start_predictor(
    supervisor: Supervisor,
    model_name: str,
    version: str,
    registry_uri: str,
    *,
    http_port: int | None = None,
    grpc_port: int | None = None,
    logger_url: str | None = None,
    feast_repo: str | Path | None = None,
    endpoint: str = "default",
    extra: Sequence[str] = (),
    name: str | None = None,
    wait: bool = True,
    stage_server: str | Path | None = None,
    **options: Any,
) -> Service:
    """Starts ``kubeloop.serving.predictor`` for one registry version (labelled with its model
    and version); with ``wait``, returns once ``/v1/models/<model>`` answers. With
    ``stage_server``, the predictor is forked from that warm server (its imports done)
    through a thin client, which starts it cold itself when no server answers.
    ``options`` (``env``, ``launcher``, ``timeout``) go to :meth:`Supervisor.start`."""
    http_port = http_port or free_port()
    grpc_port = grpc_port or free_port()
    program = (
        ["-m", "kubeloop.local.stages", "--socket", str(stage_server), "--service", "predictor",
         "--"]
        if stage_server
        else ["-m", "kubeloop.serving.predictor"]
    )  # fmt: skip
    args = [
        *program,
        "--model_name", model_name,
        "--version", version,
        "--registry-uri", str(registry_uri),
        "--http_port", str(http_port),
        "--grpc_port", str(grpc_port),
        "--endpoint", endpoint,
        "--configure_logging", "false",
    ]  # fmt: skip
    if logger_url:
        args += ["--logger-url", logger_url]
    if feast_repo:
        args += ["--feast-repo", str(feast_repo)]
    args += list(extra)
    return supervisor.start(
        name or predictor_name(model_name, version),
        args,
        health_url=f"http://127.0.0.1:{http_port}/v1/models/{model_name}",
        ports={"http": http_port, "grpc": grpc_port},
        labels={"model": model_name, "version": version},
        wait=wait,
        **options,
    )


def start_router(
    supervisor: Supervisor,
    split_file: str | Path,
    port: int | None = None,
    *,
    logger_url: str | None = None,
    registry_uri: str | Path | None = None,
    max_body_bytes: int | None = None,
    name: str = "router",
    wait: bool = True,
    **options: Any,
) -> Service:
    """Starts ``kubeloop.router`` reading and keeping its split in ``split_file`` (with
    ``registry_uri``, refusing splits that name versions the registry lacks; with
    ``max_body_bytes``, its cap on inference bodies); with ``wait``, returns once
    ``/healthz`` answers (``/readyz`` waits for a split).
    ``options`` (``env``, ``launcher``, ``timeout``) go to :meth:`Supervisor.start`."""
    port = port or free_port()
    args = ["-m", "kubeloop.router", "--port", str(port), "--split-file", str(split_file)]
    if logger_url:
        args += ["--logger-url", logger_url]
    if registry_uri:
        args += ["--registry-uri", str(registry_uri)]
    if max_body_bytes is not None:
        args += ["--max-body-bytes", str(max_body_bytes)]
    return supervisor.start(
        name,
        args,
        health_url=f"http://127.0.0.1:{port}/healthz",
        ports={"http": port},
        wait=wait,
        **options,
    )
