"""The local driver: the same reconciler core over the local runtime.

State lives under ``state_dir`` (``$KUBELOOP_HOME/runtime/operator``)::

    <name>.yaml            the applied ModelDeployment (``kubeloop rollout pause`` patches it)
    <name>.status.json     status, spec hash and generation, pending drift watch (atomic writes)
    <name>.commands.json   one-shot promote/rollback commands from ``kubeloop rollout``
    <name>.events.jsonl    every decision, as the cluster's Events would show it

The status is written after every pass, and every action is idempotent (the split is a
desired state, runs are keyed by name), so a killed operator resumes where it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from kubeloop.local.operator.actuators import LocalRunSubmitter, LocalServing
from kubeloop.local.supervisor import Supervisor
from kubeloop.operators.crd import ModelDeploymentStatus, parse_spec
from kubeloop.operators.gather import gather
from kubeloop.operators.metrics import RolloutMetrics
from kubeloop.operators.observe import PrometheusObserver
from kubeloop.operators.reconciler.conditions import set_condition
from kubeloop.operators.reconciler.core import Result, reconcile
from kubeloop.operators.reconciler.types import (
    RecordDecision,
    SetChampion,
    SetTraffic,
    SubmitRun,
    WatchDrift,
    iso,
)
from kubeloop.operators.settings import OperatorSettings
from kubeloop.registry import ModelRegistry

log = logging.getLogger(__name__)
# How often the driver asks the drift service which versions it still watches.
REWATCH_CHECK_SECONDS = 10.0


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


class LocalStore:
    """The files that stand in for the API server in the local runtime."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)

    def apply(self, manifest: Path | str) -> str:
        doc = yaml.safe_load(Path(manifest).read_text())
        if not isinstance(doc, dict) or doc.get("kind") != "ModelDeployment":
            raise ValueError(f"{manifest} is not a ModelDeployment")
        name = doc.get("metadata", {}).get("name")
        if not name:
            raise ValueError(f"{manifest}: metadata.name is required")
        parse_spec(doc.get("spec") or {})
        (self.dir / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        return name

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.yaml"))

    def manifest(self, name: str) -> dict[str, Any]:
        path = self.dir / f"{name}.yaml"
        if not path.exists():
            raise FileNotFoundError(f"no ModelDeployment {name!r} in {self.dir}")
        return yaml.safe_load(path.read_text())

    def patch_spec(self, name: str, patch: Callable[[dict], None]) -> None:
        doc = self.manifest(name)
        patch(doc["spec"])
        parse_spec(doc["spec"])
        (self.dir / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    def state(self, name: str) -> dict[str, Any]:
        path = self.dir / f"{name}.status.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def save_state(self, name: str, state: dict[str, Any]) -> None:
        _write_json(self.dir / f"{name}.status.json", state)

    def commands(self, name: str) -> dict[str, str]:
        path = self.dir / f"{name}.commands.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def command(self, name: str, verb: str, version: str) -> None:
        self.manifest(name)  # must exist
        _write_json(self.dir / f"{name}.commands.json", {**self.commands(name), verb: version})

    def record(self, name: str, decision: RecordDecision, now: datetime) -> None:
        with open(self.dir / f"{name}.events.jsonl", "a") as out:
            out.write(json.dumps({"time": iso(now), **asdict(decision)}) + "\n")

    def events(self, name: str) -> list[dict[str, Any]]:
        path = self.dir / f"{name}.events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class LocalOperator:
    def __init__(
        self,
        settings: OperatorSettings,
        *,
        supervisor: Supervisor,
        registry_uri: str,
        metrics: RolloutMetrics | None = None,
        submitter_factory: Callable[[str], Any] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.store = LocalStore(settings.state_dir)
        self.sup = supervisor
        self.registry_uri = registry_uri
        self.metrics = metrics or RolloutMetrics()
        self.observer = PrometheusObserver(
            settings.prometheus_url,
            timeout=settings.prometheus_timeout_seconds,
            min_window_seconds=settings.min_window_seconds,
        )
        self.now = now
        self.http = httpx.Client(timeout=10)
        self._watch_check: tuple[float, set[tuple[str, str]] | None] = (-1e9, None)
        self.submitter_factory = submitter_factory or (
            lambda uri: LocalRunSubmitter(
                self.sup, self.store.dir / "runs", uri, settings.local_runner
            )
        )

    def reconcile_one(self, name: str) -> Result | None:
        now = self.now()
        doc = self.store.manifest(name)
        state = self.store.state(name)
        status = ModelDeploymentStatus.model_validate(state.get("status", {}))
        spec_hash = hashlib.sha256(json.dumps(doc.get("spec"), sort_keys=True).encode()).hexdigest()
        generation = state.get("generation", 0) + (state.get("spec_hash") != spec_hash)
        try:
            spec = parse_spec(doc.get("spec") or {})
        except ValueError as exc:
            status.conditions = set_condition(
                status.conditions,
                "Stalled",
                "True",
                "InvalidSpec",
                str(exc),
                now=iso(now),
                generation=generation,
            )
            self.store.save_state(
                name, {**state, "status": status.model_dump(by_alias=True, mode="json")}
            )
            return None
        registry_uri = spec.model.registry_uri or self.registry_uri
        registry = ModelRegistry(registry_uri)
        serving = LocalServing(
            self.sup,
            spec.model.name,
            registry_uri,
            self.settings.router_url,
            logger_url=spec.serving.logger_url,
            prometheus_root=self.settings.prometheus_root,
            http=self.http,
        )
        submitter = self.submitter_factory(registry_uri)
        known = {status.stable_version, status.candidate_version, status.previous_version}
        obs = gather(
            now=now,
            spec=spec,
            status=status,
            registry=registry,
            observer=self.observer,
            submitter=submitter,
            ready=serving.ready_versions({v for v in known if v}),
            commands=self.store.commands(name),
        )
        result = reconcile(name, spec, status, obs, generation=generation)
        watch = state.get("watch_pending")
        for action in result.actions:
            if isinstance(action, SetTraffic):
                keep = (
                    {result.status.previous_version} if result.status.phase == "Watching" else set()
                )
                serving.apply(action, keep)
            elif isinstance(action, SubmitRun):
                submitter.submit(action)
            elif isinstance(action, SetChampion):
                registry.set_alias(spec.model.name, "champion", action.version)
            elif isinstance(action, WatchDrift):
                watch = action.version
            elif isinstance(action, RecordDecision):
                self.store.record(name, action, now)
                self.metrics.record(name, action.decision)
        watched_candidate = state.get("watched_candidate")
        # A restarted drift service has forgotten its watches: watch the versions again.
        lost = self._unwatched(spec.model.name, result.status.stable_version, watched_candidate)
        if result.status.stable_version in lost and not watch:
            log.warning("drift service no longer watches %s; watching it again", lost)
            watch = result.status.stable_version
        if watched_candidate in lost:
            watched_candidate = None
        if watch and self._watch_drift(spec.model.name, watch, registry_uri):
            watch = None
        # The canary is watched too, so its delayed labels feed the live-accuracy analysis.
        candidate = result.status.candidate_version
        if (
            candidate
            and candidate != watched_candidate
            and self._watch_drift(spec.model.name, candidate, registry_uri)
        ):
            watched_candidate = candidate
        self.metrics.canary_percent.labels(name).set(result.status.canary_percent)
        self.store.save_state(
            name,
            {
                "status": result.status.model_dump(by_alias=True, mode="json"),
                "generation": generation,
                "spec_hash": spec_hash,
                "watch_pending": watch,
                "watched_candidate": watched_candidate,
            },
        )
        return result

    def _unwatched(self, model: str, *versions: str | None) -> set[str]:
        """Which of ``versions`` the drift service does not watch (checked at most every
        ``REWATCH_CHECK_SECONDS``; an unreachable service answers nothing)."""
        clock = time.monotonic()
        if clock - self._watch_check[0] >= REWATCH_CHECK_SECONDS:
            url = f"{self.settings.drift_service_url.rstrip('/')}/v1/status"
            try:
                body = self.http.get(url, timeout=5).json()
                watched = {(w["model"], w["version"]) for w in body.get("watched", [])}
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                log.debug("drift service status at %s unavailable: %s", url, exc)
                watched = None
            self._watch_check = (clock, watched)
        watched = self._watch_check[1]
        if watched is None:
            return set()
        return {v for v in versions if v and (model, v) not in watched}

    def _watch_drift(self, model: str, version: str, registry_uri: str) -> bool:
        url = f"{self.settings.drift_service_url.rstrip('/')}/v1/watch"
        try:
            response = self.http.post(
                url,
                json={"model": model, "version": version, "registry_uri": registry_uri},
                timeout=10,
            )
            return response.status_code < 300
        except httpx.HTTPError as exc:  # retried on the next pass
            log.warning("drift service at %s unreachable: %s", url, exc)
            return False

    def run_once(self) -> dict[str, Result | None]:
        out = {}
        for name in self.store.names():
            try:
                out[name] = self.reconcile_one(name)
            except Exception:  # one broken deployment must not stop the others
                log.exception("reconcile of %s failed; retrying next pass", name)
                out[name] = None
        return out

    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        while not stop.is_set():
            self.run_once()
            stop.wait(self.settings.poll_interval_seconds)
