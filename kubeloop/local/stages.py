"""Warm pipeline stages: each kfp.local stage forked from a process that imported its libraries once.

A ``SubprocessRunner`` stage is a fresh ``sh -c "python3 -m kfp.dsl.executor_main ..."``
process: it pays a process start and the imports of kfp, pandas, torch, Ray and Feast
(0.8-3.4 s per stage here, 6.6 s for Feast) before its work, and the first call into
Feast, dask and pyarrow pays again for their lazy set-up. The stage server
(``python -m kubeloop.local.stages --socket PATH``, the local runtime's ``stages`` part)
imports all of that once (``PRELOAD``, with what the stages' first calls import lazily:
torch's first optimizer alone pulls in ``torch._dynamo``, 1.9 s) and draws one figure,
then listens on a Unix socket (mode 0600: it runs what it is sent). For each stage it
forks a child that runs the very command kfp.local would have started, the same
lightweight-component program and executor arguments, with the caller's environment
and working folder. A child is a fresh process for each stage, as on a cluster; only
the imports are shared, copy-on-write.

kfp.local 2.17 has no hook for other runners: :func:`warm_stages` points its
``subprocess_task_handler.run_local_subprocess`` at :func:`run_stage` for the run, and
any command that is not a lightweight component (a ``pip install``, a container
component) still goes to a subprocess. The stage's output streams back line by line
and its exit status ends the stream, so stage timings, per-epoch lines and a failing
stage's own error read the same as from a subprocess.

The server forks predictors too (``SERVICES``): a canary waits for its predictor, and
a predictor started cold pays 5-8 s of imports (Feast, torch, kserve) before it
answers. ``python -m kubeloop.local.stages --socket PATH --service predictor -- ARGS``
is the process the supervisor starts and stops: a thin client whose forked predictor
writes its output through it. The client's stop (it closes its side of the connection;
its death closes it too) terminates the predictor, which also dies with the server
(``PR_SET_PDEATHSIG``). With no server answering, the client runs the predictor itself,
cold.

Protocol: one JSON line (``{"argv", "env", "cwd"}`` for a stage, ``{"service", "args",
"env", "cwd"}`` for a service, or ``{"ping": true}``), answered by the child's output and
the trailer line ``\\0exit <status>`` (a ping: one JSON line about the server).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import importlib
import json
import logging
import os
import select
import signal
import socket
import socketserver
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# What the stages import, and what their first calls import lazily (Feast's file offline
# store and SQLite online store, dask's dataframes, Ray Train's torch trainer, the
# evaluation's metrics and plots).
PRELOAD = (
    "kfp.dsl.executor_main",
    "pandas",
    "pyarrow.parquet",
    "torch",
    "torch._dynamo",  # torch.optim's first optimizer imports it: 1.9 s here
    "ray",
    "ray.train",
    "ray.train.torch",
    "ray.tune",  # Ray Train's local mode reports through it
    "ray.dag",  # ray.shutdown() at a stage's exit imports it
    "kubeloop.training",
    "kubeloop.components.ingest.impl",
    "kubeloop.components.validate.impl",
    "kubeloop.components.features.impl",
    "kubeloop.components.train.impl",
    "kubeloop.components.evaluate.impl",
    "kubeloop.components.gate.impl",
    "kubeloop.components.register.impl",
    "kubeloop.features.store",
    "feast",
    "feast.infra.offline_stores.dask",
    "feast.infra.online_stores.sqlite",
    "feast.infra.passthrough_provider",
    "feast.infra.compute_engines.local.compute",
    "feast.repo_operations",
    "dask.dataframe",
    # the validate stage's first schema check
    "pandera.backends.pandas.register",
    "pandera.backends.pandas.builtin_checks",
    "pandera.backends.pandas.builtin_hypotheses",
    "pandera.accessors.pandas_accessor",
    "pandera.strategies.pandas_strategies",
    # the features stage's registry and parquet reads, the train stage's model file
    "feast.infra.registry.file",
    "dask.dataframe.io.parquet.arrow",
    "torch.utils.serialization",
    "sklearn.metrics",
    "scipy.stats",
    "matplotlib.pyplot",
    # the predictor (SERVICES)
    "kubeloop.serving.predictor",
    "kubeloop.serving.server",
)
# The long-running programs the server forks (name -> module with ``main(argv)``).
SERVICES = {"predictor": "kubeloop.serving.predictor"}
SERVICE_STOP_S = 10.0  # a service's grace after SIGTERM, before SIGKILL
PR_SET_PDEATHSIG = 1
EXECUTOR_MODULE = "kfp.dsl.executor_main"
PROGRAM_FILE = "ephemeral_component.py"
TRAILER = b"\0exit "
CONNECT_TIMEOUT_S = 2.0

log = logging.getLogger("kubeloop.stages")


class StageServerError(RuntimeError):
    """The stage server cannot be reached or ended a stage without its exit status."""


@dataclass(frozen=True)
class StageCall:
    """A lightweight component's command, taken apart: its program and its arguments."""

    program: str  # the component's Python source, which the shell writes to a file
    args: list[str]  # --executor_input ... --function_to_execute <name>


def lightweight_call(full_command: Sequence[str]) -> StageCall | None:
    """The program and arguments of a KFP lightweight component's command
    (``sh -c|-ec <script> <program> <args...>``, the script writing ``$0`` to a file and
    running ``python3 -m kfp.dsl.executor_main`` on it with ``"$@"``); None for anything
    else, including a script that installs packages first."""
    command = list(full_command)
    if len(command) < 4 or command[0] != "sh" or command[1] not in ("-c", "-ec"):
        return None
    script = command[2]
    if (
        EXECUTOR_MODULE not in script
        or PROGRAM_FILE not in script
        or '"$0"' not in script
        or '"$@"' not in script
        or "pip install" in script
    ):
        return None
    return StageCall(program=command[3], args=command[4:])


# --- the server ------------------------------------------------------------------------


def preload(modules: Sequence[str] = PRELOAD) -> dict[str, float]:
    """Imports ``modules``; returns seconds per module (what this saves every stage)."""
    from kubeloop.features.feast_import import load_feast

    loaders = {"feast": load_feast, "matplotlib.pyplot": _pyplot_with_first_figure}
    seconds: dict[str, float] = {}
    for name in modules:
        started = time.perf_counter()
        loaders.get(name, lambda name=name: importlib.import_module(name))()
        seconds[name] = time.perf_counter() - started
    return seconds


def _pyplot_with_first_figure() -> None:
    """Imports pyplot on the reports' backend (Agg, chosen before pyplot loads) and draws
    and saves one small figure: a process's first one loads the font list and sets up the
    renderer (half a second here), which each stage's report would pay."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2), dpi=50)
    ax.plot([0, 1], [0, 1], label="warm-up")
    ax.set(xlabel="x", ylabel="y", title="warm-up")
    ax.legend()
    fig.tight_layout()
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)


def _quiet_import_finalizers() -> int:
    """Lets the exit of a stage skip the finalizers the imports registered (torch's
    operator libraries undo their registrations one by one: 30-110 ms at every stage's
    end, for a process that is about to go); the server's own exit still runs them.
    Finalizers a stage registers itself still run when it ends. How many were quieted."""
    import weakref

    found = [o for o in gc.get_objects() if isinstance(o, weakref.finalize) and o.atexit]
    for finalizer in found:
        finalizer.atexit = False
    return len(found)


def _become(env: dict[str, str], cwd: str) -> None:
    """A forked child takes the caller's environment and folder instead of the server's."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the server's handler exits quietly
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    from kubeloop.settings import get_settings

    get_settings.cache_clear()  # settings come from this child's environment
    logging.getLogger().handlers.clear()  # the program configures its own


def _exit_code(exc: SystemExit) -> int:
    if isinstance(exc.code, int):
        return exc.code
    if exc.code is not None:
        print(exc.code, file=sys.stderr)  # what the interpreter prints for a message
    return 0 if exc.code is None else 1


def _run_call(call: StageCall, env: dict[str, str], cwd: str) -> int:
    """Runs one stage in this (forked) process, as ``sh -c`` would run it; its exit status."""
    _become(env, cwd)
    os.environ["_KFP_RUNTIME"] = "true"
    with tempfile.TemporaryDirectory(prefix="kubeloop-stage-") as folder:
        program = Path(folder) / PROGRAM_FILE
        program.write_text(call.program)
        sys.argv = [EXECUTOR_MODULE, "--component_module_path", str(program), *call.args]
        from kfp.dsl.executor_main import executor_main

        try:
            executor_main()
        except SystemExit as exc:
            return _exit_code(exc)
        except BaseException:
            traceback.print_exc()
            return 1
    return 0


def _run_service(
    name: str, args: list[str], env: dict[str, str], cwd: str, server: socketserver.BaseServer
) -> int:
    """Runs service ``name`` in this (forked) process, as ``python -m <module> args`` would
    (and dies with the server's thread that forked it); its exit status."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    server.socket.close()  # the server's listening socket is not the service's to hold
    _become(env, cwd)
    return _run_here(name, args)


def _run_here(name: str, args: list[str]) -> int:
    """Runs service ``name`` in this process; its exit status."""
    module = SERVICES[name]
    sys.argv = [module, *args]
    try:
        importlib.import_module(module).main(args)
    except SystemExit as exc:
        return _exit_code(exc)
    return 0


class _StageHandler(socketserver.StreamRequestHandler):
    """One connection, in a thread of the server: a ping, or one stage run in a child
    forked for it, whose stdout and stderr are the connection itself. (A forked handler
    forking the stage again cost a second fork and exit of the whole preloaded process,
    30-40 ms, at every stage.)"""

    def handle(self) -> None:
        try:
            request = json.loads(self.rfile.readline() or b"{}")
        except json.JSONDecodeError as exc:
            self._end(2, f"kubeloop stage server: request is not JSON ({exc})")
            return
        if request.get("ping"):
            info = {"pid": os.getpid(), "preloaded": sorted(self.server.preloaded)}
            self.wfile.write(json.dumps(info).encode() + b"\n")
            return
        env = {str(k): str(v) for k, v in (request.get("env") or {}).items()}
        cwd = str(request.get("cwd") or "/")
        if "service" in request:
            name = str(request["service"])
            if name not in SERVICES:
                self._end(2, f"kubeloop stage server: no service {name!r} (it forks: "
                          f"{', '.join(sorted(SERVICES))})")  # fmt: skip
                return
            args = [str(a) for a in request.get("args") or []]
            pid = self._fork(lambda: _run_service(name, args, env, cwd, self.server))
            self.server.services.add(pid)
            try:
                code = _watch_service(pid, self.connection)
            finally:
                self.server.services.discard(pid)
            with contextlib.suppress(OSError):  # a client that hung up reads no status
                self._end(code)
            return
        call = lightweight_call(request.get("argv") or [])
        if call is None:
            self._end(2, "kubeloop stage server: not a lightweight component's command")
            return
        pid = self._fork(lambda: _run_call(call, env, cwd))
        _, status = os.waitpid(pid, 0)
        self._end(os.waitstatus_to_exitcode(status))

    def _fork(self, run: Callable[[], int]) -> int:
        """Forks a child that writes its output to the connection and runs ``run``; its pid."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                fd = self.connection.fileno()
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.stdout.reconfigure(line_buffering=True)
                sys.stderr.reconfigure(line_buffering=True)
                code = run()
                atexit._run_exitfuncs()  # what a process's exit runs (Ray's disconnect)
            except BaseException:
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        return pid

    def _end(self, code: int, message: str = "") -> None:
        if message:
            log.warning("refused a request: %s", message)
            self.wfile.write(message.encode() + b"\n")
        self.wfile.write(TRAILER + str(code).encode() + b"\n")


def _watch_service(pid: int, connection: socket.socket) -> int:
    """Waits for service child ``pid``; once the client hangs up (its stop, or its death)
    terminates the child, and kills it after ``SERVICE_STOP_S``. The child's exit status."""
    deadline = None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if deadline is None:
            readable, _, _ = select.select([connection], [], [], 0.2)
            if readable and not _receive(connection):  # the client hung up
                _signal(pid, signal.SIGTERM)
                deadline = time.monotonic() + SERVICE_STOP_S
        elif time.monotonic() > deadline:
            _signal(pid, signal.SIGKILL)
        else:
            time.sleep(0.05)


def _receive(connection: socket.socket) -> bytes:
    """What the client sent (nothing is expected); b"" once it hung up or reset."""
    try:
        return connection.recv(4096)
    except OSError:
        return b""


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def stop_services(pids: set[int], timeout: float = SERVICE_STOP_S) -> None:
    """Terminates the service children ``pids`` (the server's exit), killing what is left
    after ``timeout``; their handlers' threads then end."""
    for pid in list(pids):
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in list(pids):
        _signal(pid, signal.SIGKILL)


class _StageServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Each connection in a thread; a stage forked from that thread runs alone in its child
    (the child holds only the forking thread; CPython re-creates the import lock and
    logging its locks in a forked child)."""

    preloaded: dict[str, float]
    services: set[int]  # the service children running now


def serve(socket_path: str | Path) -> None:
    """Preloads, then serves stages on ``socket_path`` until terminated."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.perf_counter()
    seconds = preload()
    quieted = _quiet_import_finalizers()
    # What the imports left is shared with every child, copy-on-write. A child's garbage
    # collections would write to each of those objects' headers and so copy their pages:
    # frozen, the collector leaves them alone (bench/predictor_memory measures the gain).
    gc.collect()
    gc.freeze()
    threads = threading.active_count()
    log.info(
        "preloaded %d modules in %.1fs (%s); %d thread(s); %d finalizer(s) left to the server's exit",
        len(seconds), time.perf_counter() - started,
        ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items() if v >= 0.3), threads, quieted,
    )  # fmt: skip
    path = Path(socket_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a socket left by a server that was killed
    old_mask = os.umask(0o177)  # the socket is created 0600: it runs what it is sent
    try:
        server = _StageServer(str(path), _StageHandler)
    finally:
        os.umask(old_mask)
    server.preloaded = seconds
    server.services = set()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info("serving stages on %s", path)
    try:
        server.serve_forever()
    finally:
        stop_services(server.services)
        server.server_close()
        path.unlink(missing_ok=True)


# --- the client --------------------------------------------------------------------------


def _connect(socket_path: str | Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT_S)
    try:
        sock.connect(str(socket_path))
    except OSError as exc:
        sock.close()
        raise StageServerError(f"no stage server at {socket_path}: {exc}") from exc
    return sock


def ping(socket_path: str | Path) -> dict | None:
    """What the server at ``socket_path`` says about itself; None when none answers."""
    try:
        with _connect(socket_path) as sock:
            sock.sendall(b'{"ping": true}\n')
            line = sock.makefile("rb").readline()
        return json.loads(line) if line else None
    except (StageServerError, OSError, json.JSONDecodeError):
        return None


def wait_ready(
    socket_path: str | Path, timeout: float, detail: Callable[[], str] | None = None
) -> dict:
    """Waits until the server at ``socket_path`` answers (it binds its socket only once
    its imports are done); what it says about itself. ``TimeoutError`` after ``timeout`` s."""
    from kubeloop.local.wait import wait_until

    return wait_until(
        lambda: ping(socket_path), timeout=timeout, interval=0.2,
        what=f"the stage server at {socket_path}", detail=detail,
    )  # fmt: skip


def run_stage(
    socket_path: str | Path, full_command: Sequence[str], env_vars: dict[str, str] | None = None
) -> int:
    """Runs a stage on the server and prints its output as it comes; its exit status.

    The same contract as kfp.local's ``run_local_subprocess``: the environment is this
    process's plus ``env_vars``.
    """
    request = {
        "argv": list(full_command),
        "env": {**os.environ, **(env_vars or {})},
        "cwd": os.getcwd(),
    }
    with _connect(socket_path) as sock:
        sock.settimeout(None)  # a stage runs as long as it needs
        sock.sendall(json.dumps(request).encode() + b"\n")
        for raw in sock.makefile("rb"):
            if raw.startswith(TRAILER):
                print("\n")
                return int(raw[len(TRAILER) :].strip() or 1)
            print(raw.decode(errors="replace"), end="")
    raise StageServerError(f"the stage server at {socket_path} ended a stage without its status")


def run_service(socket_path: str | Path, name: str, args: Sequence[str]) -> int:
    """Runs service ``name`` (``SERVICES``) with ``args``, forked from the server at
    ``socket_path``, and writes its output as it comes; returns its exit status. SIGTERM
    or SIGINT stops it. With no server answering, runs it in this process, cold."""
    if name not in SERVICES:
        print(f"kubeloop: no service {name!r} (known: {', '.join(sorted(SERVICES))})",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        sock = _connect(socket_path)
    except StageServerError as exc:
        print(f"kubeloop: {exc}; starting {name} in this process", file=sys.stderr, flush=True)
        return _run_here(name, list(args))

    def stop(*_: object) -> None:  # the server terminates the service when this side closes
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    request = {"service": name, "args": list(args), "env": dict(os.environ), "cwd": os.getcwd()}
    out = sys.stdout.buffer
    with sock:
        sock.settimeout(None)  # a service runs until it is stopped
        sock.sendall(json.dumps(request).encode() + b"\n")
        for raw in sock.makefile("rb"):
            if raw.startswith(TRAILER):
                return int(raw[len(TRAILER) :].strip() or 1)
            out.write(raw)
            out.flush()
    print(f"kubeloop: the stage server at {socket_path} ended {name} without its status",
          file=sys.stderr)  # fmt: skip
    return 1


@contextlib.contextmanager
def warm_stages(socket_path: str | Path) -> Iterator[None]:
    """Within, kfp.local's ``SubprocessRunner`` sends lightweight-component stages to the
    server at ``socket_path`` instead of starting a process for each."""
    from kfp.local import subprocess_task_handler as handler

    original = handler.run_local_subprocess

    def run_local_subprocess(full_command: list[str], env_vars: dict | None = None) -> int:
        if lightweight_call(full_command) is None:
            return original(full_command, env_vars)
        return run_stage(socket_path, full_command, env_vars)

    handler.run_local_subprocess = run_local_subprocess
    try:
        yield
    finally:
        handler.run_local_subprocess = original


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="the Unix socket to serve on")
    parser.add_argument(
        "--service",
        choices=sorted(SERVICES),
        help="instead of serving: run this service forked from the server on --socket, with "
        "the arguments after '--'",
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the service's arguments")
    options = parser.parse_args(argv)
    if options.service is None:
        if options.args:
            parser.error(f"arguments {options.args} need --service")
        serve(options.socket)
        return
    args = options.args[1:] if options.args[:1] == ["--"] else options.args
    sys.exit(run_service(options.socket, options.service, args))


if __name__ == "__main__":
    main()
