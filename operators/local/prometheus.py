"""A local Prometheus (Debian's ``prometheus`` binary) scraping file-discovered targets.

The local driver writes the predictors it runs into ``targets/*.json`` (file_sd), so
Prometheus follows versions coming and going without a reload.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from kubeloop.runtime import ProcessRecord, Supervisor

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


def start_prometheus(
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
