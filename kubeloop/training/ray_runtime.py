"""One Ray instance for kubeloop's training runs: a cluster address, or a reused local head.

Starting Ray costs tens of seconds on a small machine, so local training never starts
a private instance per run. ``connect()`` joins, in order: an already initialised Ray
in this process, ``get_settings().ray_address`` when it answers (a real cluster, e.g. the
chart's KubeRay RayCluster through Ray Client), or the local head recorded in
``$KUBELOOP_HOME/ray/head.json`` — starting that head once with ``ray start --head
--block`` when it is not running. The :class:`RayTarget` it returns says which, and why
a configured cluster was skipped; the training run logs and records it. Successive pipeline stages, runs
and tests then reuse it; ``stop_local_head()`` ends exactly the processes it started.

A run of one CPU worker that would train on this machine's own Ray (no cluster
configured, or none reachable) joins no Ray at all when asked (``in_process``): Ray
Train's local mode runs the training loop in the calling process, with the same
``ray.train`` reporting. Joining the head and starting Ray Train's controller and one
worker process cost 7-8 s per ``fit()`` here, for a worker that would run on the same
machine anyway.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from kubeloop.local.ports import free_port
from kubeloop.local.wait import wait_until

HEAD_FILE = "head.json"
START_TIMEOUT_S = 120.0

# Ray's APIs are unauthenticated (CVE-2023-48022), so the local head must listen on
# loopback only. ``--node-ip-address=127.0.0.1`` alone does not do it: on Linux Ray
# replaces a loopback node IP with the machine's routable one
# (``services.resolve_ip_for_localhost``), and the GCS, raylet, object manager,
# runtime-env agent and client server then bind to that IP or to every interface.
# Ray's single-machine mode (its default on macOS and Windows) keeps 127.0.0.1 as the
# node IP, and with it every component binds to loopback. The dashboard stays off
# (``--include-dashboard=false``); its host would default to 127.0.0.1 anyway.
LOOPBACK_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


class RayRuntimeError(RuntimeError):
    """The local Ray head could not be started or reached; the message says why."""


@dataclass(frozen=True)
class LocalHead:
    address: str  # host:port of the GCS
    pid: int  # the ``ray start --block`` process (leader of its own process group)
    temp_dir: str
    started_at: float
    # False for a head recorded by an older kubeloop, which listened on every interface
    loopback_only: bool = False


def ray_dir(home: Path | None = None) -> Path:
    if home is None:
        from kubeloop.settings import get_settings

        home = get_settings().home
    return Path(home).resolve() / "ray"


def _port_open(address: str, timeout: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_head(home: Path | None = None) -> LocalHead | None:
    """The recorded local head when its process is alive and its port answers."""
    path = ray_dir(home) / HEAD_FILE
    if not path.exists():
        return None
    try:
        head = LocalHead(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None
    if _pid_alive(head.pid) and _port_open(head.address):
        return head
    return None


def start_local_head(
    home: Path | None = None, num_cpus: int = 2, ray_client_port: int | None = None
) -> LocalHead:
    """Returns the running local head, starting one (``ray start --head --block``) if needed;
    with ``ray_client_port`` it also serves Ray Client there (as a KubeRay head serves 10001)."""
    head = read_head(home)
    if head is not None and head.loopback_only:
        return head
    if head is not None:  # started before heads were loopback-only: replace it
        _kill_group(head.pid)
    folder = ray_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # Ray's unix socket paths must stay short, so its temp dir lives under /tmp.
    temp_dir = f"/tmp/kubeloop-ray-{os.getuid()}-{port}"
    ray_bin = Path(sys.executable).with_name("ray")
    cmd = [
        str(ray_bin),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={num_cpus}",
        "--disable-usage-stats",
        "--include-dashboard=false",
        f"--temp-dir={temp_dir}",
    ]
    if ray_client_port is not None:
        cmd.append(f"--ray-client-server-port={ray_client_port}")
    log = open(folder / "head.log", "ab")  # noqa: SIM115 - handed to the child process
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **LOOPBACK_ONLY_ENV}
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )
    log.close()
    address = f"127.0.0.1:{port}"

    def head_up() -> bool:
        if proc.poll() is not None:
            raise RayRuntimeError(
                f"ray start exited with {proc.returncode}; see {folder / 'head.log'}"
            )
        return _port_open(address) and (
            ray_client_port is None or _port_open(f"127.0.0.1:{ray_client_port}")
        )

    try:
        wait_until(head_up, timeout=START_TIMEOUT_S, interval=0.5, what=f"Ray head on {address}")
    except TimeoutError:
        _kill_group(proc.pid)
        raise RayRuntimeError(
            f"Ray head did not open {address} within {START_TIMEOUT_S:.0f}s"
        ) from None
    head = LocalHead(
        address=address,
        pid=proc.pid,
        temp_dir=temp_dir,
        started_at=time.time(),
        loopback_only=True,
    )
    (folder / HEAD_FILE).write_text(json.dumps(asdict(head), indent=2))
    return head


def _kill_group(pid: int, timeout: float = 10.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return

    def group_gone() -> bool:
        with contextlib.suppress(ChildProcessError):  # reap our child: no zombie left
            os.waitpid(pid, os.WNOHANG)
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        return False

    try:
        wait_until(group_gone, timeout=timeout, interval=0.3, what=f"Ray head group {pid} to exit")
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def stop_local_head(home: Path | None = None) -> bool:
    """Stops the recorded local head (only its own process group); True if one ran."""
    path = ray_dir(home) / HEAD_FILE
    if not path.exists():
        return False
    try:
        head = LocalHead(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        path.unlink(missing_ok=True)
        return False
    import ray

    if ray.is_initialized():
        ray.shutdown()
    alive = _pid_alive(head.pid)
    _kill_group(head.pid)
    path.unlink(missing_ok=True)
    return alive


def _is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _keep_loopback_node_ip() -> None:
    """This process's Ray driver joins a loopback head as 127.0.0.1 (see LOOPBACK_ONLY_ENV).

    Otherwise ``ray.init`` rewrites 127.0.0.1 to the machine's routable IP, which the
    loopback-only head does not listen on. Ray reads the variable once, when
    ``ray._private.ray_constants`` is first imported, so a process that imported Ray
    before gets the same value set on that module.
    """
    os.environ.update(LOOPBACK_ONLY_ENV)
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def train_env() -> dict[str, str]:
    """Ray Train settings for small local runs, unless the environment sets them.

    The controller polls its workers every 2 s by default, and each ``ray.train.report``
    waits for that poll: with sub-second epochs that dominated the run. At 0.2 s a
    retraining window's 20 epochs still spent 4 s waiting (0.2 s each); at 0.05 s they
    spend about 1 s, and a poll is one small actor call. One clean per-epoch line (ours)
    replaces Ray Train's duplicating print patch.
    """
    defaults = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.05", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    return {k: os.environ.get(k, v) for k, v in defaults.items()}


RAY_CLIENT_SCHEME = "ray://"
CLIENT_ATTEMPTS = 3


@dataclass(frozen=True)
class RayTarget:
    """Where a training run's Ray lives, as recorded with the run."""

    address: str  # what ray.init joined (or the GCS of Ray initialised before in this process)
    # A Ray cluster this process is not a node of: joined through Ray Client (the chart's
    # RayCluster) or at another machine's address. Its workers share no disk with this
    # process, so a run's files go to shared storage.
    remote: bool
    # Why training runs on this machine's own Ray instead of a cluster ("" when it joined
    # the configured address).
    fallback: str = ""
    # Ray Train's local mode: the loop runs in this process, no Ray joined (``address`` "").
    in_process: bool = False

    def describe(self) -> str:
        if self.remote:
            return f"training on the Ray cluster at {self.address}"
        why = f" ({self.fallback})" if self.fallback else ""
        if self.in_process:
            return f"training in this process, Ray Train's local mode (one CPU worker){why}"
        return f"training in this pod on its own Ray at {self.address}{why}"


def _host_port(address: str) -> str:
    return address.removeprefix(RAY_CLIENT_SCHEME).rstrip("/")


def choose_address(
    configured: str | None, reachable: Callable[[str], bool] = lambda a: _port_open(a, 2.0)
) -> tuple[str | None, str]:
    """The address to join and, when a configured cluster is skipped, why.

    ``None`` means this machine's own Ray (the local head). A configured address whose
    host does not resolve or whose port does not answer (no KubeRay operator, no
    RayCluster, a NetworkPolicy) falls back to it rather than failing the run: the
    returned reason says so, and the caller logs and records it.
    """
    if not configured:
        return None, "KUBELOOP_RAY_ADDRESS names no Ray cluster"
    host_port = _host_port(configured)
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise RayRuntimeError(
            f"Ray address must be ray://host:port (Ray Client) or host:port, got {configured!r}"
        )
    if reachable(host_port):
        return configured, ""
    return None, f"the Ray cluster at {configured} is not reachable"


def in_process_eligible(num_workers: int, use_gpu: bool) -> bool:
    """Whether a run may train in its own process (Ray Train's local mode) when no cluster
    answers: one CPU worker."""
    return num_workers == 1 and not use_gpu


def connect(
    home: Path | None = None, address: str | None = None, *, in_process: bool = False
) -> RayTarget:
    """Initialises Ray in this process against the configured cluster or the local head.

    ``address`` (default: ``get_settings().ray_address``) is a Ray Client address
    (``ray://head:10001``, how a pipeline pod joins a KubeRay cluster) or a GCS
    ``host:port``; when it is unset or unreachable, training falls back to this machine's
    own Ray head (started once, then reused), and the returned target says why; with
    ``in_process`` it joins nothing then, and the target says the run trains in this
    process (Ray Train's local mode). Worker stdout (per-epoch lines) is forwarded here.
    """
    import ray

    if ray.is_initialized():
        from ray.util.client import ray as ray_client

        if ray_client.is_connected():
            return RayTarget(address="an existing Ray Client connection", remote=True)
        gcs = ray.get_runtime_context().gcs_address
        return RayTarget(address=gcs, remote=not _is_loopback(gcs))
    if address is None:
        from kubeloop.settings import get_settings

        address = get_settings().ray_address
    chosen, fallback = choose_address(address)
    if chosen is None and in_process:
        return RayTarget(address="", remote=False, fallback=fallback, in_process=True)
    if chosen is None:
        chosen = start_local_head(home).address
    if _is_loopback(_host_port(chosen)):
        _keep_loopback_node_ip()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Worker processes inherit the driver's environment; keep Ray Train's own logs quiet.
    env_vars = train_env()
    if not chosen.startswith(RAY_CLIENT_SCHEME):
        # Ray Train's helper actors look the cluster up by themselves; with another Ray
        # instance on the machine that lookup is ambiguous, so name ours explicitly.
        env_vars["RAY_ADDRESS"] = chosen
    init = functools.partial(
        ray.init,
        address=chosen,
        logging_level="WARNING",
        log_to_driver=True,
        configure_logging=True,
        runtime_env={"env_vars": env_vars},
    )
    if chosen.startswith(RAY_CLIENT_SCHEME):
        # Ray Client's server starts one server process per client; when that start fails
        # it aborts the connection, and a new one usually gets a working server.
        from tenacity import (
            Retrying,
            retry_if_exception_type,
            stop_after_attempt,
            wait_incrementing,
        )

        for attempt in Retrying(
            stop=stop_after_attempt(CLIENT_ATTEMPTS),
            wait=wait_incrementing(start=2.0, increment=2.0),
            retry=retry_if_exception_type(ConnectionAbortedError),
            before_sleep=lambda _: ray.shutdown(),
            reraise=True,
        ):
            with attempt:
                init()
    else:
        init()
    remote = chosen.startswith(RAY_CLIENT_SCHEME) or not _is_loopback(_host_port(chosen))
    return RayTarget(address=chosen, remote=remote, fallback=fallback)
