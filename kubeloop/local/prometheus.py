"""Local Prometheus: a generated config, Debian's ``prometheus`` under the supervisor, and
a small HTTP query client.

``start_prometheus`` scrapes static targets (``{job: ["host:port"]}``) and the target
files under ``<root>/targets/`` (``write_targets``: the local runtime registers its parts
and predictors there, and Prometheus picks changes up without a restart), evaluating
the given alert rule files (``SHIPPED_RULES``: ``manifests/monitoring/rules.yaml``).
Tests use second-long scrape and evaluation intervals.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from kubeloop.generated import REPO_ROOT
from kubeloop.local.ports import free_port
from kubeloop.local.supervisor import Service, Supervisor
from kubeloop.monitoring.rules import RULES_PATH

SHIPPED_RULES = REPO_ROOT / RULES_PATH
FILE_TARGETS_JOB = "kubeloop"  # the job of the targets registered with write_targets


class PrometheusError(RuntimeError):
    """Prometheus answered a query with an error."""


def scrape_config(
    targets: dict[str, list[str]],
    *,
    scrape_interval: str = "15s",
    evaluation_interval: str = "15s",
    rule_files: Sequence[str | Path] = (),
    target_dir: Path | None = None,
) -> str:
    """Prometheus configuration scraping ``{job: ["host:port", ...]}`` at ``/metrics``, and
    with ``target_dir`` the target files in it (job ``kubeloop``)."""
    for job, addrs in targets.items():
        if (
            not job
            or not isinstance(addrs, list)
            or not all(isinstance(a, str) and ":" in a for a in addrs)
        ):
            raise ValueError(
                f"scrape targets of job {job!r} must be a list of 'host:port', got {addrs!r}"
            )
    jobs = [
        {"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": addrs}]}
        for job, addrs in targets.items()
    ]
    if target_dir is not None:
        jobs.append(
            {
                "job_name": FILE_TARGETS_JOB,
                "file_sd_configs": [
                    {"files": [f"{target_dir}/*.json"], "refresh_interval": scrape_interval}
                ],
            }
        )
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": jobs,
    }
    return yaml.safe_dump(config, sort_keys=False)


def prometheus_binary() -> str:
    """``$KUBELOOP_PROMETHEUS_BIN``, else ``prometheus`` on the PATH (``make prometheus``)."""
    binary = os.environ.get("KUBELOOP_PROMETHEUS_BIN") or shutil.which("prometheus")
    if not binary or not (Path(binary).exists() or shutil.which(binary)):
        raise FileNotFoundError(
            f"the `prometheus` binary is not installed{f' at {binary}' if binary else ''}; "
            "run `make prometheus` (apt-get install prometheus)"
        )
    return binary


def write_targets(
    root: Path, group: str, targets: list[str], labels: dict[str, str] | None = None
) -> None:
    """Registers ``targets`` (``host:port``) as ``group`` with the Prometheus under ``root``."""
    folder = Path(root) / "targets"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{group}.json.tmp"
    tmp.write_text(json.dumps([{"targets": sorted(targets), "labels": labels or {}}]))
    tmp.replace(folder / f"{group}.json")


def start_prometheus(
    supervisor: Supervisor,
    root: str | Path,
    port: int | None = None,
    *,
    targets: dict[str, list[str]] | None = None,
    rule_files: Sequence[str | Path] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str | None = None,
    name: str = "prometheus",
    wait: bool = True,
    timeout: float = 30.0,
) -> Service:
    """Writes ``<root>/prometheus.yml`` and starts Prometheus on 127.0.0.1 under ``supervisor``.

    It scrapes the static ``targets`` and the target files under ``<root>/targets/``;
    the evaluation interval defaults to the scrape interval. With ``wait``, returns once
    ``/-/ready`` answers.
    """
    root = Path(root).resolve()
    (root / "targets").mkdir(parents=True, exist_ok=True)
    config = root / "prometheus.yml"
    config.write_text(
        scrape_config(
            targets or {},
            scrape_interval=scrape_interval,
            evaluation_interval=evaluation_interval or scrape_interval,
            rule_files=[Path(p).resolve() for p in rule_files],
            target_dir=root / "targets",
        )
    )
    port = port or free_port()
    argv = [
        prometheus_binary(),
        f"--config.file={config}",
        f"--storage.tsdb.path={root / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1d",
    ]
    return supervisor.start(
        name,
        argv,
        health_url=f"http://127.0.0.1:{port}/-/ready",
        ports={"http": port},
        python=False,
        wait=wait,
        timeout=timeout,
    )


class PrometheusClient:
    """Prometheus's HTTP API: instant queries, alerts and scrape targets."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=f"{self.url}/api/v1", timeout=timeout)

    def api(self, path: str, **params: str) -> Any:
        response = self._http.get(path, params=params)
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"{path}: HTTP {response.status_code}: {response.text[:500]}")
        return body["data"]

    def query(self, promql: str) -> list[dict]:
        return self.api("query", query=promql)["result"]

    def alerts(self) -> list[dict]:
        return self.api("alerts")["alerts"]

    def targets_up(self) -> dict[str, str]:
        """``{job: health}`` of the active targets (one entry per job)."""
        return {t["labels"]["job"]: t["health"] for t in self.api("targets")["activeTargets"]}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PrometheusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
