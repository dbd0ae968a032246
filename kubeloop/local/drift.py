"""Starting the drift service as a local process from its own venv (``make drift-env``).

Used by the local runtime, the tests and the benchmarks; runs in the main environment.
"""

from __future__ import annotations

import os
from pathlib import Path

from kubeloop.generated import REPO_ROOT
from kubeloop.local.ports import free_port
from kubeloop.local.supervisor import Service, Supervisor

DRIFT_VENV = REPO_ROOT / ".venv-drift"
DRIFT_SERVICE_MODULE = "kubeloop.drift"  # run as `python -m DRIFT_SERVICE_MODULE`


def drift_python() -> Path:
    """The drift environment's interpreter (``make drift-env`` creates it)."""
    python = Path(os.environ.get("KUBELOOP_DRIFT_PYTHON", DRIFT_VENV / "bin" / "python"))
    if not python.exists():
        raise FileNotFoundError(f"drift environment not found at {python}; run `make drift-env`")
    return python


# The detector set for short local runs: the prediction (score distribution) detector only
# (the predicted-class one off too), reading one instance in 20; its expected run time
# between false alarms (2000 steps, about 7 minutes at 100 instances/s) is long against the
# run. Its CUSUM thresholds are exact and take milliseconds (the window and bootstrap
# settings serve ``method: alibi``, whose thresholds are simulated and cached).
PREDICTION_ONLY_DETECTORS = {
    "ert": "2000",
    "mmd": "false",
    "univariate": "false",
    "error_rate": "false",
    "prediction": "true",
    "predicted_class": "false",
    "univariate_windows": "[40]",
    "univariate_every": "20",
    "univariate_bootstraps": "4000",
    "cvm_reference_rows": "300",
}


def start_drift_service(
    supervisor: Supervisor,
    registry_uri: str | Path,
    port: int | None = None,
    *,
    cache_dir: str | Path | None = None,
    detectors: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    name: str = "drift",
    wait: bool = True,
    timeout: float = 60.0,
) -> Service:
    """Starts the drift service on 127.0.0.1 under ``supervisor`` (health-checked on /healthz).

    ``detectors`` become ``KUBELOOP_DRIFT_<KEY>`` settings (else the service's defaults);
    calibrated thresholds are cached in ``cache_dir`` (default ``<supervisor root>/drift-cache``).
    """
    port = port or free_port()
    cache_dir = cache_dir or supervisor.root / "drift-cache"
    return supervisor.start(
        name,
        [
            str(drift_python()), "-m", DRIFT_SERVICE_MODULE, "--port", str(port),
            "--registry-uri", str(registry_uri), "--cache-dir", str(cache_dir),
        ],
        health_url=f"http://127.0.0.1:{port}/healthz",
        ports={"http": port},
        env={
            "PYTHONPATH": str(REPO_ROOT),
            **(env or {}),
            **{f"KUBELOOP_DRIFT_{k.upper()}": str(v) for k, v in (detectors or {}).items()},
        },
        python=False,
        wait=wait,
        timeout=timeout,
    )  # fmt: skip


__all__ = [
    "DRIFT_SERVICE_MODULE",
    "PREDICTION_ONLY_DETECTORS",
    "drift_python",
    "start_drift_service",
]
