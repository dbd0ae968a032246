"""Records what the loop does while it runs: one sample a second, plus the operator's decisions.

Each sample reads the ModelDeployment's status (the operator's state file), the router's
split (``GET /admin/split``) and the drift statistics and thresholds from Prometheus
(``kubeloop_drift_statistic`` / ``kubeloop_drift_threshold``, as the dashboards do) and
the accuracy each version is estimated to have before its labels arrive
(``kubeloop_estimated_accuracy``), and which inputs moved
(``kubeloop_feature_drift_p_value``).
The decisions come from the operator's event log at the end.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from kubeloop.local.prometheus import PrometheusClient, PrometheusError


def _series(result: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    return {
        (r["metric"].get("version", ""), r["metric"].get("detector", "")): float(r["value"][1])
        for r in result
    }


class Recorder:
    def __init__(
        self, name: str, model: str, state_dir: Path, router_url: str, prometheus_url: str
    ) -> None:
        self.name = name
        self.model = model
        self.state_dir = Path(state_dir)
        self.router_url = router_url.rstrip("/")
        self._prometheus = PrometheusClient(prometheus_url, timeout=2)
        self.samples: list[dict[str, Any]] = []
        self.marks: list[dict[str, Any]] = []  # events the demo itself knows (onset, offers)
        self.bad_candidate: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._http = httpx.Client(timeout=2)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._http.close()
        self._prometheus.close()

    def mark(self, kind: str, message: str, **extra: Any) -> None:
        self.marks.append({"time": time.time(), "kind": kind, "message": message, **extra})

    # --- reading ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        path = self.state_dir / f"{self.name}.status.json"
        try:
            return json.loads(path.read_text()).get("status", {})
        except (OSError, ValueError):
            return {}

    def decisions(self) -> list[dict[str, Any]]:
        path = self.state_dir / f"{self.name}.events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def split(self) -> dict[str, Any] | None:
        try:
            response = self._http.get(f"{self.router_url}/admin/split")
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def _query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result; empty while Prometheus does not answer."""
        try:
            return self._prometheus.query(promql)
        except (httpx.HTTPError, PrometheusError):
            return []

    def _by_version(self, metric: str, label: str = "") -> dict[str, Any]:
        """``metric{model=...}`` per version, or per version and ``label``."""
        out: dict[str, Any] = {}
        for r in self._query(f'{metric}{{model="{self.model}"}}'):
            version, value = r["metric"].get("version", ""), float(r["value"][1])
            if label:
                out.setdefault(version, {})[r["metric"].get(label, "")] = value
            else:
                out[version] = value
        return out

    def drift(self) -> list[dict[str, Any]]:
        selector = f'{{model="{self.model}",feature="_all"}}'
        values = {
            metric: _series(self._query(f"kubeloop_drift_{metric}{selector}"))
            for metric in ("statistic", "threshold", "detected")
        }
        return [
            {
                "version": version,
                "detector": detector,
                "statistic": statistic,
                "threshold": values["threshold"].get((version, detector)),
                "detected": bool(values["detected"].get((version, detector), 0)),
            }
            for (version, detector), statistic in values["statistic"].items()
        ]

    def feature_p_values(self) -> dict[str, dict[str, float]]:
        """Per version and input feature, the p-value of the drift service's batch test of
        the latest instances against the reference (which inputs moved)."""
        return self._by_version("kubeloop_feature_drift_p_value", "feature")

    def estimated_accuracy(self) -> dict[str, float]:
        """Per version, the drift service's accuracy estimate from scores alone."""
        return self._by_version("kubeloop_estimated_accuracy")

    def sample(self) -> dict[str, Any]:
        status = self.status()
        split = self.split() or {}
        canary = split.get("canary") or {}
        return {
            "time": time.time(),
            "phase": status.get("phase"),
            "stable_version": status.get("stableVersion"),
            "candidate_version": status.get("candidateVersion"),
            "drift_state": status.get("drift"),
            "split_stable": (split.get("stable") or {}).get("version"),
            "split_canary": canary.get("version"),
            "canary_percent": split.get("canary_percent", 0) if canary else 0,
            "drift": self.drift(),
            "estimated_accuracy": self.estimated_accuracy(),
            "feature_p_values": self.feature_p_values(),
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(1.0)
