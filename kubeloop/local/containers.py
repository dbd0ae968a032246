"""A Docker-compatible container API on this machine, for kfp.local's ``DockerRunner``.

kfp.local runs container tasks through the ``docker`` Python client, which speaks the
Docker Engine API. :func:`container_api` finds one: ``$DOCKER_HOST`` when set, Docker's
own socket when a daemon answers there, else podman's implementation of the same API
(``podman system service``) started on a socket under ``$KUBELOOP_HOME/podman`` for as
long as the context lasts. Podman reads the repository's ``containers.conf``
(``mk/containers.conf``: runc, file limits) when ``$CONTAINERS_CONF`` is unset.

:func:`stage_container_args` are the ``DockerRunner`` arguments that let the stage
images run the pipeline as the subprocess runner does: the component's command as the
whole command line (the images' entrypoints are for running them by hand), the host's network (the S3
endpoint and Ray on loopback), the caller's uid so outputs in the run folder are theirs,
local paths the run reads or writes bound at the same place, and kubeloop's settings as
``KUBELOOP_*`` variables.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOCKER_SOCKET = Path("/var/run/docker.sock")
CONTAINERS_CONF = Path(__file__).resolve().parents[2] / "mk" / "containers.conf"
SERVICE_START_SECONDS = 30.0
# Settings sections the stages read; paths (home, feast, registry) are the container's own.
FORWARDED_SECTIONS = ("objectives", "gate", "s3", "training")
FORWARDED_FIELDS = ("model_name",)


class ContainerEngineError(RuntimeError):
    """No container API can be reached, or the engine refused a request."""


class NoContainerEngine(ContainerEngineError):
    """No engine at all: no DOCKER_HOST, no Docker daemon, podman not installed."""


@dataclass(frozen=True)
class ContainerApi:
    """A reachable Docker Engine API: its ``DOCKER_HOST`` URL and who serves it."""

    url: str
    engine: str  # "docker", "podman", or what $DOCKER_HOST points at ("docker-host")
    rootless: bool

    def client(self):
        import docker

        return docker.DockerClient(base_url=self.url)


def _answers(url: str) -> dict[str, Any] | None:
    """The engine's ``info()`` when ``url`` answers, else None."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.DockerClient(base_url=url, timeout=10)
        try:
            return client.info()
        finally:
            client.close()
    except (DockerException, OSError):
        return None


def _api(url: str, engine: str, info: Mapping[str, Any]) -> ContainerApi:
    security = info.get("SecurityOptions") or []
    return ContainerApi(url, engine, rootless=any("rootless" in s for s in security))


@contextlib.contextmanager
def container_api(home: Path) -> Iterator[ContainerApi]:
    """A Docker-compatible API for the duration of the context (see the module doc).

    Raises :class:`ContainerEngineError` naming what was tried when none can be had.
    """
    if url := os.environ.get("DOCKER_HOST"):
        info = _answers(url)
        if info is None:
            raise ContainerEngineError(f"DOCKER_HOST={url} does not answer the Docker API")
        yield _api(url, "docker-host", info)
        return
    if DOCKER_SOCKET.exists() and (info := _answers(f"unix://{DOCKER_SOCKET}")):
        yield _api(f"unix://{DOCKER_SOCKET}", "docker", info)
        return
    podman = shutil.which("podman")
    if podman is None:
        raise NoContainerEngine(
            "no container engine: DOCKER_HOST is unset, no Docker daemon answers on "
            f"{DOCKER_SOCKET} and podman is not installed (`make container-runtime`)"
        )
    with podman_service(podman, Path(home) / "podman") as api:
        yield api


@contextlib.contextmanager
def podman_service(podman: str, folder: Path) -> Iterator[ContainerApi]:
    """``podman system service`` on ``folder/podman.sock`` until the context ends (a
    supervised process: its whole group is stopped)."""
    from kubeloop.local.supervisor import Supervisor
    from kubeloop.local.wait import wait_until

    folder.mkdir(parents=True, exist_ok=True)
    socket = folder / "podman.sock"
    socket.unlink(missing_ok=True)
    url = f"unix://{socket}"
    env = {}
    if "CONTAINERS_CONF" not in os.environ and CONTAINERS_CONF.exists():
        env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    with Supervisor(folder) as supervisor:
        service = supervisor.start(
            "podman-service", [podman, "system", "service", "--time=0", url], python=False,
            env=env,
        )  # fmt: skip

        def answers() -> dict[str, Any] | None:
            if not service.running():
                raise ContainerEngineError(
                    f"podman system service exited with {service.exit_status()}:\n"
                    f"{service.log_tail()}"
                )
            return _answers(url) if socket.exists() else None

        try:
            info = wait_until(
                answers, timeout=SERVICE_START_SECONDS, what=f"podman system service on {url}"
            )
        except TimeoutError as exc:
            raise ContainerEngineError(str(exc)) from None
        try:
            yield _api(url, "podman", info)
        finally:
            socket.unlink(missing_ok=True)


def missing_images(api: ContainerApi, references: list[str]) -> list[str]:
    """The image references the engine does not hold (kfp.local would try to pull them)."""
    client = api.client()
    try:
        held = {tag for image in client.images.list() for tag in image.tags}
    finally:
        client.close()
    return [ref for ref in references if ref not in held]


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if value is None:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}__{key.upper()}", item, out)
    elif isinstance(value, (list, bool)):
        out[prefix] = json.dumps(value)
    else:
        out[prefix] = str(value)


def settings_environment(settings) -> dict[str, str]:
    """``KUBELOOP_*`` variables that give a stage container these settings' sections the
    stages read (objectives, gate, S3, training) and the model name; paths stay the
    image's own."""
    data = settings.model_dump(mode="json")
    out: dict[str, str] = {}
    for name in FORWARDED_SECTIONS + FORWARDED_FIELDS:
        _flatten(f"KUBELOOP_{name.upper()}", data[name], out)
    return out


def stage_container_args(api: ContainerApi, settings, bind_paths: list[Path]) -> dict[str, Any]:
    """``DockerRunner`` arguments for kubeloop's stage images (see the module doc)."""
    from docker.types import Mount

    env = settings_environment(settings)
    env["HOME"] = "/tmp"  # the caller's uid has no home in the image
    binds = sorted({str(Path(p).resolve()) for p in bind_paths})
    args: dict[str, Any] = {
        # On a cluster the component's command replaces the image's ENTRYPOINT (a pod's
        # command); kfp.local sends it as the CMD instead, so the entrypoint is cleared.
        "entrypoint": [""],
        "network_mode": "host",
        "environment": env,
        "mounts": [Mount(target=p, source=p, type="bind") for p in binds],
    }
    if api.rootless and api.engine == "podman":
        # The caller is root inside a rootless user namespace: files land as the caller.
        args["user"] = "0:0"
    else:
        args["user"] = f"{os.getuid()}:{os.getgid()}"
    return args
