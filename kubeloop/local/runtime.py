"""The local runtime under one supervisor: Prometheus, the drift service, the router, the operator.

With ``warm_stages`` the stage server (:mod:`kubeloop.local.stages`) is a part too, and
the operator's retraining runs fork their pipeline stages from it
(``KUBELOOP_STAGE_SERVER``).

``LocalRuntime.start()`` starts each part (adopting any already running), health-checks
it before the next one needs it, and registers every scrape target with the local
Prometheus; the operator then starts predictor processes and retraining runs under the
same supervisor folder, so ``stop()`` (``kubeloop down``) ends all of them. Logs go to
``<home>/runtime/logs/``.

With ``keep_running`` (the default) it then starts the watchdog
(``python -m kubeloop.local.watchdog``, ``watchdog.py``): a part that dies is restarted
through the same launchers (``start_part``), with back-off, and given up after
``restarts.max_restarts`` restarts in a row (``restarts.py``). The runtime's settings are
kept in ``<home>/runtime/runtime.json`` for it. The operator's predictors and retraining
runs are the operator's to restart, not the watchdog's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kubeloop.local.restarts import PartPhase, PartRestarts, RestartPolicy
from kubeloop.local.supervisor import ProcessState, Service, Supervisor, SupervisorError

# Every detector family, armed in a second or two per version: CUSUM charts with exact
# thresholds (``method: cusum``), reading every prediction. The demo runs minutes and
# must not false-alarm, so the expected run times between false alarms are long: 10^7
# predictions for each input and score detector (mmd: the T² distance of all inputs; cvm:
# each number; fet: each 0/1 feature and category; prediction: the score), about three
# days each at 40 a second; 10^6 for the predicted-class charts (label shift: the share
# of positive predictions, 4 % → 9 % when the fraud prior rises 3.5-fold); 100,000 labels
# for the error rate of the delayed labels (about 40 minutes of labels; v1's reference
# counts two dozen errors, so its rate is known to ±20 % and its chart is tuned to a
# larger rise: it catches what changes the model's error rate, covariate drift 2.2 % →
# 9.5 % errors, concept drift 2.5 % → 6.5 %, and label shift, whose extra frauds v1 partly
# misses, a few seconds after the labels come). Covariate drift moves the inputs and
# scores at once and is flagged before any label arrives.
DEMO_DRIFT_DETECTORS = {
    "method": "cusum",
    "ert": "10000000",
    "mmd": "true",
    "mmd_every": "1",
    "univariate": "true",
    "univariate_every": "1",
    "prediction": "true",
    "error_rate": "true",
    "error_rate_ert": "100000",
    "predicted_class": "true",
    "predicted_class_ert": "1000000",
    "accuracy_window": "300",
}
DEMO_ERT = int(DEMO_DRIFT_DETECTORS["ert"])  # the input and score detectors'
DEMO_ERRORS_ERT = int(DEMO_DRIFT_DETECTORS["error_rate_ert"])
DEMO_CLASS_ERT = int(DEMO_DRIFT_DETECTORS["predicted_class_ert"])


@dataclass(frozen=True)
class RuntimePorts:
    prometheus: int = 9090
    router: int = 8080
    drift: int = 8300
    operator_metrics: int = 8081

    @classmethod
    def free(cls) -> RuntimePorts:
        from kubeloop.local.ports import free_ports

        return cls(*free_ports(4))


PARTS = ("prometheus", "drift", "router", "operator")  # the long-running parts, in start order
STAGES = "stages"  # the warm stage server (kubeloop.local.stages), a part when asked for
STAGES_SOCKET = "stages.sock"
WATCHDOG = "watchdog"  # the supervisor name of the process that restarts them


@dataclass(frozen=True)
class PartStatus:
    """One process of the runtime as ``kubeloop up`` reports it."""

    state: ProcessState
    restarts: int = 0  # restarts the watchdog made
    gave_up: bool = False
    detail: str = ""  # why it was last restarted, or given up

    @property
    def ok(self) -> bool:
        return self.state.ok and not self.gave_up

    def __str__(self) -> str:
        if self.gave_up:
            return f"GAVE UP after {self.restarts} restart(s): {self.detail}"
        text = {
            ProcessState.HEALTHY: "healthy",
            ProcessState.UNHEALTHY: "NOT HEALTHY",
            ProcessState.DOWN: "DOWN",
            ProcessState.RUNNING: "running",
            ProcessState.FINISHED: "finished",
            ProcessState.FAILED: "FAILED",
        }[self.state]
        return text + (f" (restarted {self.restarts}x)" if self.restarts else "")


@dataclass
class LocalRuntime:
    home: Path
    ports: RuntimePorts = field(default_factory=RuntimePorts)
    registry_uri: str | None = None
    operator_env: dict[str, str] = field(default_factory=dict)
    drift_env: dict[str, str] = field(default_factory=dict)
    drift_cache: Path | None = None  # calibrated thresholds, keyed by reference digest
    keep_running: bool = True  # start the watchdog that restarts parts that die
    restarts: RestartPolicy = field(default_factory=RestartPolicy)
    # Run pipeline stages warm: the stage server is a part, and retraining runs (and
    # ``stage_server`` callers) fork their stages from it instead of starting processes.
    warm_stages: bool = False

    def __post_init__(self) -> None:
        self.home = Path(self.home).resolve()
        self.registry_uri = self.registry_uri or str(self.home / "registry")
        self.root = self.home / "runtime"
        self.supervisor = Supervisor(self.root)
        self.prometheus_root = self.root / "prometheus"
        self.state_dir = self.root / "operator"
        self.config_path = self.root / "runtime.json"
        self.watchdog_state_path = self.root / "watchdog.json"
        self.stage_socket = self.root / STAGES_SOCKET

    @property
    def parts(self) -> tuple[str, ...]:
        """The long-running parts of this runtime."""
        return (*PARTS, STAGES) if self.warm_stages else PARTS

    # --- settings kept for the watchdog ------------------------------------------------------
    def save(self) -> None:
        data = {
            "home": str(self.home),
            "ports": asdict(self.ports),
            "registry_uri": self.registry_uri,
            "operator_env": self.operator_env,
            "drift_env": self.drift_env,
            "drift_cache": str(self.drift_cache) if self.drift_cache else None,
            "keep_running": self.keep_running,
            "restarts": asdict(self.restarts),
            "warm_stages": self.warm_stages,
        }
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.config_path)

    @classmethod
    def load(cls, home: str | Path) -> LocalRuntime:
        """The runtime as ``start()`` last saved it under ``home``."""
        path = Path(home).resolve() / "runtime" / "runtime.json"
        data = json.loads(path.read_text())
        return cls(
            Path(data["home"]),
            RuntimePorts(**data["ports"]),
            registry_uri=data["registry_uri"],
            operator_env=data["operator_env"],
            drift_env=data["drift_env"],
            drift_cache=Path(data["drift_cache"]) if data["drift_cache"] else None,
            keep_running=data["keep_running"],
            restarts=RestartPolicy(**data["restarts"]),
            warm_stages=data.get("warm_stages", False),
        )

    # --- addresses -------------------------------------------------------------------------
    def url(self, part: str) -> str:
        port = {
            "prometheus": self.ports.prometheus,
            "router": self.ports.router,
            "drift": self.ports.drift,
            "operator": self.ports.operator_metrics,
        }[part]
        return f"http://127.0.0.1:{port}"

    def env(self) -> dict[str, str]:
        """What the operator (and `kubeloop rollout`) need to find this runtime."""
        return {
            "KUBELOOP_HOME": str(self.home),
            "KUBELOOP_REGISTRY_URI": str(self.registry_uri),
            "KUBELOOP_OPERATOR_PROMETHEUS_URL": self.url("prometheus"),
            "KUBELOOP_OPERATOR_ROUTER_URL": self.url("router"),
            "KUBELOOP_OPERATOR_DRIFT_SERVICE_URL": self.url("drift"),
            "KUBELOOP_OPERATOR_STATE_DIR": str(self.state_dir),
            "KUBELOOP_OPERATOR_PROMETHEUS_ROOT": str(self.prometheus_root),
            "KUBELOOP_OPERATOR_METRICS_PORT": str(self.ports.operator_metrics),
            **({"KUBELOOP_STAGE_SERVER": str(self.stage_socket)} if self.warm_stages else {}),
            **self.operator_env,
        }

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self, manifests: list[Path] | None = None, timeout: float = 90.0) -> None:
        """Starts Prometheus, the drift service, the router, the stage server (with
        ``warm_stages``) and the operator; waits until healthy; then (``keep_running``)
        the watchdog. The stage server is not waited for: until it has imported what the
        stages need (about 15 s), runs start a process per stage."""
        from kubeloop.local.prometheus import write_targets

        self.save()
        for part, port in (
            ("drift", self.ports.drift),
            ("router", self.ports.router),
            ("operator", self.ports.operator_metrics),
        ):
            write_targets(self.prometheus_root, part, [f"127.0.0.1:{port}"])
        # Started together, then waited for: each takes seconds to come up.
        for name in ("prometheus", "drift", "router"):
            self.start_part(name)
        if self.warm_stages:
            self.start_part(STAGES)
        for name in ("prometheus", "drift", "router"):
            self.supervisor.wait_healthy(name, timeout)
        self.start_operator(manifests or [])
        if self.keep_running:
            self.start_watchdog()

    def start_part(
        self, name: str, *, manifests: list[Path] = (), wait: bool = False, timeout: float = 60.0
    ) -> Service:
        """Starts one part through its launcher (adopting it when it runs). Starts are
        serialised across processes (``kubeloop up`` and the watchdog), so a part is
        never started twice."""
        from kubeloop.local.drift import start_drift_service
        from kubeloop.local.prometheus import start_prometheus
        from kubeloop.local.servers import start_router

        with self._start_lock():
            if name == "prometheus":
                return start_prometheus(
                    self.supervisor, self.prometheus_root, self.ports.prometheus, wait=False
                )
            if name == "drift":
                return start_drift_service(
                    self.supervisor,
                    self.registry_uri,
                    self.ports.drift,
                    cache_dir=self.drift_cache or self.root / "drift-cache",
                    detectors=self.drift_env,
                    env={"KUBELOOP_HOME": str(self.home)},
                    wait=False,
                )
            if name == "router":
                return start_router(
                    self.supervisor,
                    self.root / "router-split.json",
                    self.ports.router,
                    registry_uri=self.registry_uri,
                    wait=False,
                )
            if name == STAGES:
                return self.supervisor.start(
                    STAGES, ["-m", "kubeloop.local.stages", "--socket", str(self.stage_socket)]
                )
            if name == "operator":
                args = ["-m", "kubeloop.local.operator"]
                for manifest in manifests:
                    args += ["--apply", str(Path(manifest).resolve())]
                return self.supervisor.start(
                    "operator",
                    args,
                    health_url=f"{self.url('operator')}/metrics",
                    ports={"metrics": self.ports.operator_metrics},
                    env={**os.environ, **self.env()},
                )
        raise SupervisorError(f"no part named {name!r}; the parts are {', '.join(self.parts)}")

    def start_operator(self, manifests: list[Path], timeout: float = 60.0) -> None:
        self.start_part("operator", manifests=manifests)
        try:
            self.supervisor.wait_healthy("operator", timeout)
        except BaseException:
            self.supervisor.stop("operator")
            raise

    def start_watchdog(self) -> Service:
        """Starts (or adopts) the process that restarts parts that die."""
        if self.supervisor.running(WATCHDOG) is None:
            self.watchdog_state_path.unlink(missing_ok=True)  # a previous watchdog's counts
        return self.supervisor.start(
            WATCHDOG, ["-m", "kubeloop.local.watchdog", "--home", str(self.home)]
        )

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        with open(self.root / "start.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def apply(self, manifest: Path) -> str:
        """Hands a ModelDeployment to the running operator (it reads its state folder)."""
        from kubeloop.local.operator.driver import LocalStore

        return LocalStore(self.state_dir).apply(manifest)

    def restart_states(self) -> dict[str, PartRestarts]:
        """What the watchdog last wrote of each part (empty when it never ran)."""
        try:
            data = json.loads(self.watchdog_state_path.read_text())
        except (OSError, ValueError):
            return {}
        return {name: PartRestarts.from_dict(part) for name, part in data.get("parts", {}).items()}

    def status(self) -> dict[str, PartStatus]:
        """Every process under the runtime's supervisor: services by health, one-shot
        jobs (retraining runs) by result, with the watchdog's restart count."""
        restarts = self.restart_states()
        out = {}
        for record in self.supervisor.list():
            state = self.supervisor.state(record.name)
            if state is None:  # stopped meanwhile
                continue
            part = restarts.get(record.name, PartRestarts())
            # Given up until something starts it again (the watchdog notices on its next look).
            gave_up = part.phase is PartPhase.GAVE_UP and state is ProcessState.DOWN
            out[record.name] = PartStatus(state, part.restarts, gave_up, part.last_exit)
        return out

    def stop(self) -> list[str]:
        """Stops the watchdog first (so it restarts nothing), then the operator (so it
        starts nothing new), then everything else."""
        stopped = [name for name in (WATCHDOG, "operator") if self.supervisor.stop(name)]
        self.watchdog_state_path.unlink(missing_ok=True)
        return stopped + self.supervisor.stop_all()


def check_started(runtime: LocalRuntime) -> None:
    """Raises unless every long-running part is healthy (finished runs do not count)."""
    status = runtime.status()
    unhealthy = [
        name for name in (*runtime.parts, WATCHDOG) if name in status and not status[name].ok
    ]
    if unhealthy:
        raise SupervisorError(
            f"not healthy: {', '.join(unhealthy)}; logs in {runtime.supervisor.logs}"
        )
