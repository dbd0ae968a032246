"""The local driver: the same reconciler core over the local runtime.

State lives under ``state_dir`` (``$KUBELOOP_HOME/runtime/operator``)::

    <name>.yaml            the applied ModelDeployment (``kubeloop rollout pause`` patches it)
    <name>.status.json     status, spec hash and generation (atomic writes)
    <name>.commands.json   one-shot promote/rollback commands from ``kubeloop rollout``
    <name>.events.jsonl    every decision, as the cluster's Events would show it

The status is written after every pass, and every action is idempotent (the split is a
desired state, runs are keyed by name, a watch the drift service lost is asked for again
by the pass that observes it lost), so a killed operator resumes where it was. The pass
itself is the shared loop (``kubeloop.operators.loop``) over ``LocalActuators``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from kubeloop.local.operator.actuators import LocalActuators, LocalRunSubmitter, LocalServing
from kubeloop.local.supervisor import Supervisor
from kubeloop.operators.crd import ModelDeploymentStatus, parse_spec
from kubeloop.operators.drift_service import DriftServiceClient
from kubeloop.operators.loop import ReconcileLoop, stalled_on_invalid_spec
from kubeloop.operators.metrics import RolloutMetrics
from kubeloop.operators.observe import PrometheusObserver
from kubeloop.operators.reconciler.core import Result
from kubeloop.operators.reconciler.types import RecordDecision, iso
from kubeloop.operators.settings import OperatorSettings
from kubeloop.registry import ModelRegistry

log = logging.getLogger(__name__)


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
        stage_server: Path | None = None,
    ) -> None:
        self.settings = settings
        self.stage_server = stage_server  # the warm server predictors are forked from
        self.store = LocalStore(settings.state_dir)
        self.sup = supervisor
        self.registry_uri = registry_uri
        self.metrics = metrics or RolloutMetrics()
        self.observer = PrometheusObserver(
            settings.prometheus_url,
            timeout=settings.prometheus_timeout_seconds,
            min_window_seconds=settings.min_window_seconds,
        )
        self.loop = ReconcileLoop(
            self.observer, self.metrics, poll_interval=settings.poll_interval_seconds
        )
        self.now = now
        self.http = httpx.Client(timeout=10)
        self.drift = DriftServiceClient(settings.drift_service_url, http=self.http)
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
            status = stalled_on_invalid_spec(status, exc, now=now, generation=generation)
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
            feast_repo=self.settings.feast_store,
            prometheus_root=self.settings.prometheus_root,
            stage_server=self.stage_server,
            http=self.http,
        )
        actuators = LocalActuators(
            name,
            spec.model.name,
            registry,
            self.drift,
            serving,
            self.submitter_factory(registry_uri),
            self.store,
            now,
        )
        commands = self.store.commands(name)
        result = self.loop.run(name, spec, status, generation, now, commands, registry, actuators)
        self.store.save_state(
            name,
            {
                "status": result.status.model_dump(by_alias=True, mode="json"),
                "generation": generation,
                "spec_hash": spec_hash,
            },
        )
        return result

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
