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
        self.prometheus_url = prometheus_url.rstrip("/")
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

    def drift(self) -> list[dict[str, Any]]:
        selector = f'{{model="{self.model}",feature="_all"}}'
        out = []
        try:
            values = {}
            for metric in ("statistic", "threshold", "detected"):
                response = self._http.get(
                    f"{self.prometheus_url}/api/v1/query",
                    params={"query": f"kubeloop_drift_{metric}{selector}"},
                )
                values[metric] = _series(response.json()["data"]["result"])
        except (httpx.HTTPError, ValueError, KeyError):
            return []
        for (version, detector), statistic in values["statistic"].items():
            out.append(
                {
                    "version": version,
                    "detector": detector,
                    "statistic": statistic,
                    "threshold": values["threshold"].get((version, detector)),
                    "detected": bool(values["detected"].get((version, detector), 0)),
                }
            )
        return out

    def feature_p_values(self) -> dict[str, dict[str, float]]:
        """Per version and input feature, the p-value of the drift service's batch test of
        the latest instances against the reference (which inputs moved)."""
        try:
            response = self._http.get(
                f"{self.prometheus_url}/api/v1/query",
                params={"query": f'kubeloop_feature_drift_p_value{{model="{self.model}"}}'},
            )
            result = response.json()["data"]["result"]
        except (httpx.HTTPError, ValueError, KeyError):
            return {}
        out: dict[str, dict[str, float]] = {}
        for r in result:
            version, feature = r["metric"].get("version", ""), r["metric"].get("feature", "")
            out.setdefault(version, {})[feature] = float(r["value"][1])
        return out

    def estimated_accuracy(self) -> dict[str, float]:
        """Per version, the drift service's accuracy estimate from scores alone."""
        try:
            response = self._http.get(
                f"{self.prometheus_url}/api/v1/query",
                params={"query": f'kubeloop_estimated_accuracy{{model="{self.model}"}}'},
            )
            result = response.json()["data"]["result"]
        except (httpx.HTTPError, ValueError, KeyError):
            return {}
        return {version: value for (version, _), value in _series(result).items()}

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
