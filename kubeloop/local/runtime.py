"""The local runtime under one supervisor: Prometheus, the drift service, the router, the operator.

``LocalRuntime.start()`` starts each part (adopting any already running), health-checks
it before the next one needs it, and registers every scrape target with the local
Prometheus; the operator then starts predictor processes and retraining runs under the
same supervisor folder, so ``stop()`` (``kubeloop down``) ends all of them. Logs go to
``<home>/runtime/logs/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kubeloop.local.supervisor import Supervisor, SupervisorError

# Detector set-up the demo can afford on two cores. One expected run time between false
# alarms (ert, in detector steps) applies to every detector, and it must be long against
# the run: the error-rate detector steps on every delayed label (40 a second here), so
# ert 25000 is about 10 minutes of labels. It catches all that changes the model's
# error rate: covariate drift (2.2 % → 9.5 % errors on the demo stream) and concept
# drift (2.5 % → 6.5 %), a few seconds after the labels come. Its FET thresholds for a
# new version take seconds to calibrate (windows of 50 labels, a few hundred reference
# rows) and are cached by reference digest. The other detectors cost too much set-up at
# such an ert: the prediction-score CVM detector needs 30-125 s per new version (against
# 5 s at ert 2000, where the labels would false-alarm every minute), MMD and the
# per-feature FET minutes. Label shift leaves the error rate as it was (2.5 % → 2.6 %),
# so this set-up does not flag it (see docs/benchmarks.md, loop section).
DEMO_DRIFT_DETECTORS = {
    "ert": "25000",
    "mmd": "false",
    "univariate": "false",
    "prediction": "false",
    "error_rate": "true",
    "error_windows": "[50]",
    "accuracy_window": "300",
}
DEMO_ERT = int(DEMO_DRIFT_DETECTORS["ert"])


@dataclass(frozen=True)
class RuntimePorts:
    prometheus: int = 9090
    router: int = 8080
    drift: int = 8300
    operator_metrics: int = 8081

    @classmethod
    def free(cls) -> RuntimePorts:
        from kubeloop.local.ports import free_port

        return cls(free_port(), free_port(), free_port(), free_port())


@dataclass
class LocalRuntime:
    home: Path
    ports: RuntimePorts = field(default_factory=RuntimePorts)
    registry_uri: str | None = None
    operator_env: dict[str, str] = field(default_factory=dict)
    drift_env: dict[str, str] = field(default_factory=dict)
    drift_cache: Path | None = None  # calibrated thresholds, keyed by reference digest

    def __post_init__(self) -> None:
        self.home = Path(self.home).resolve()
        self.registry_uri = self.registry_uri or str(self.home / "registry")
        self.supervisor = Supervisor(self.home / "runtime")
        self.prometheus_root = self.home / "runtime" / "prometheus"
        self.state_dir = self.home / "runtime" / "operator"

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
            **self.operator_env,
        }

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self, manifests: list[Path] | None = None, timeout: float = 90.0) -> None:
        """Starts Prometheus, the drift service, the router and the operator; waits until healthy."""
        from kubeloop.local.drift import start_drift_service
        from kubeloop.local.prometheus import start_prometheus, write_targets
        from kubeloop.local.servers import start_router

        sup = self.supervisor
        write_targets(self.prometheus_root, "drift", [f"127.0.0.1:{self.ports.drift}"])
        write_targets(self.prometheus_root, "router", [f"127.0.0.1:{self.ports.router}"])
        write_targets(
            self.prometheus_root, "operator", [f"127.0.0.1:{self.ports.operator_metrics}"]
        )
        # Started together, then waited for: each takes seconds to come up.
        start_prometheus(sup, self.prometheus_root, self.ports.prometheus, wait=False)
        start_drift_service(
            sup,
            self.registry_uri,
            self.ports.drift,
            cache_dir=self.drift_cache or self.home / "runtime" / "drift-cache",
            detectors=self.drift_env,
            env={"KUBELOOP_HOME": str(self.home)},
            wait=False,
        )
        start_router(
            sup,
            self.home / "runtime" / "router-split.json",
            self.ports.router,
            registry_uri=self.registry_uri,
            wait=False,
        )
        for name in ("prometheus", "drift", "router"):
            sup.wait_healthy(name, timeout)
        self.start_operator(manifests or [])

    def start_operator(self, manifests: list[Path]) -> None:
        args = ["-m", "kubeloop.local.operator"]
        for manifest in manifests:
            args += ["--apply", str(Path(manifest).resolve())]
        self.supervisor.start(
            "operator",
            args,
            health_url=f"{self.url('operator')}/metrics",
            ports={"metrics": self.ports.operator_metrics},
            env={**os.environ, **self.env()},
            wait=True,
        )

    def apply(self, manifest: Path) -> str:
        """Hands a ModelDeployment to the running operator (it reads its state folder)."""
        from kubeloop.local.operator.driver import LocalStore

        return LocalStore(self.state_dir).apply(manifest)

    def status(self) -> dict[str, bool]:
        return {r.name: self.supervisor.healthy(r.name) for r in self.supervisor.list()}

    def stop(self) -> list[str]:
        """Stops the operator first (so it starts nothing new), then everything else."""
        stopped = ["operator"] if self.supervisor.stop("operator") else []
        return stopped + self.supervisor.stop_all()


def check_started(runtime: LocalRuntime) -> None:
    unhealthy = [name for name, ok in runtime.status().items() if not ok]
    if unhealthy:
        raise SupervisorError(
            f"not healthy: {', '.join(unhealthy)}; logs in {runtime.supervisor.logs}"
        )
