"""Local Prometheus: a generated scrape config and Debian's ``/usr/bin/prometheus``.

The local runtime and the operator's local driver start it with the kubeloop
services as targets and the alert rules from ``manifests/monitoring/rules.yaml``;
tests use short scrape and evaluation intervals.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubeloop.generated import REPO_ROOT
from kubeloop.local.drift import stop_process
from kubeloop.local.ports import free_port
from kubeloop.local.supervisor import ProcessRecord, Supervisor
from kubeloop.monitoring.rules import RULES_PATH

PROMETHEUS_BIN = "/usr/bin/prometheus"


class PrometheusError(RuntimeError):
    """Prometheus is missing, failed to start, or answered a query with an error."""


def scrape_config(
    targets: dict[str, list[str]],
    *,
    scrape_interval: str = "15s",
    evaluation_interval: str = "15s",
    rule_files: list[str | Path] | None = None,
) -> str:
    """Prometheus configuration scraping ``{job: ["host:port", ...]}`` at ``/metrics``."""
    for job, addrs in targets.items():
        if (
            not job
            or not isinstance(addrs, list)
            or not all(isinstance(a, str) and ":" in a for a in addrs)
        ):
            raise ValueError(
                f"scrape targets of job {job!r} must be a list of 'host:port', got {addrs!r}"
            )
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "rule_files": [str(p) for p in (rule_files or [])],
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": addrs}]}
            for job, addrs in targets.items()
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


@dataclass
class PrometheusProcess:
    process: subprocess.Popen
    url: str
    work_dir: Path

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.process, timeout)

    def __enter__(self) -> PrometheusProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        path = self.work_dir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise PrometheusError(f"{path}: HTTP {exc.code}: {exc.read()[:500]!r}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{path} failed: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict]:
        return self.api("query", query=promql)["result"]

    def alerts(self) -> list[dict]:
        return self.api("alerts")["alerts"]

    def targets_up(self) -> dict[str, str]:
        return {t["labels"]["job"]: t["health"] for t in self.api("targets")["activeTargets"]}


def start_prometheus(
    work_dir: str | Path,
    targets: dict[str, list[str]],
    *,
    port: int | None = None,
    rule_files: list[str | Path] | None = None,
    scrape_interval: str = "15s",
    evaluation_interval: str = "15s",
    binary: str | None = None,
    timeout: float = 30.0,
) -> PrometheusProcess:
    """Writes the config under ``work_dir`` and starts Prometheus on 127.0.0.1; waits until ready."""
    binary = binary or os.environ.get("KUBELOOP_PROMETHEUS_BIN", PROMETHEUS_BIN)
    if not Path(binary).exists() and not shutil.which(binary):
        raise PrometheusError(f"prometheus not found at {binary}; run `make prometheus`")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if rule_files is None:
        rule_files = [REPO_ROOT / RULES_PATH]
    config = work_dir / "prometheus.yml"
    config.write_text(
        scrape_config(
            targets,
            scrape_interval=scrape_interval,
            evaluation_interval=evaluation_interval,
            rule_files=[Path(p).resolve() for p in rule_files],
        )  # fmt: skip
    )
    port = port or free_port()
    cmd = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={work_dir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1d",
        "--web.enable-lifecycle",
    ]
    with (work_dir / "prometheus.log").open("ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work_dir)
    prom = PrometheusProcess(proc, f"http://127.0.0.1:{port}", work_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PrometheusError(
                f"prometheus exited with {proc.returncode}:\n{prom.log()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(prom.url + "/-/ready", timeout=1) as resp:
                if resp.status == 200:
                    return prom
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    prom.stop()
    raise PrometheusError(f"prometheus not ready after {timeout}s:\n{prom.log()[-3000:]}")


# --- file-discovered targets under the supervisor (the local runtime's Prometheus) ---

CONFIG = """\
global:
  scrape_interval: {interval}
  evaluation_interval: {interval}
scrape_configs:
  - job_name: kubeloop
    file_sd_configs:
      - files: ["{targets}/*.json"]
        refresh_interval: {interval}
"""


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        raise FileNotFoundError(
            "the `prometheus` binary is not installed (apt-get install prometheus)"
        )
    return path


def write_targets(
    root: Path, group: str, targets: list[str], labels: dict[str, str] | None = None
) -> None:
    folder = root / "targets"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{group}.json.tmp"
    tmp.write_text(json.dumps([{"targets": sorted(targets), "labels": labels or {}}]))
    tmp.replace(folder / f"{group}.json")


def supervise_prometheus(
    supervisor: Supervisor, root: Path, port: int, *, interval: str = "1s", name: str = "prometheus"
) -> ProcessRecord:
    root.mkdir(parents=True, exist_ok=True)
    (root / "targets").mkdir(exist_ok=True)
    config = root / "prometheus.yml"
    config.write_text(CONFIG.format(interval=interval, targets=(root / "targets").resolve()))
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
    )
