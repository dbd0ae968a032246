"""Local actuators: predictor processes per version, the router's split, retraining runs,
decisions in the state folder (``LocalActuators`` is what the shared loop drives)."""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from kubeloop.local.prometheus import write_targets
from kubeloop.local.supervisor import Supervisor
from kubeloop.operators.drift_service import DriftServiceClient
from kubeloop.operators.loop import SharedActuators
from kubeloop.operators.reconciler.types import (
    RecordDecision,
    RunObservation,
    RunState,
    ServingMode,
    SetTraffic,
    SubmitRun,
)

if TYPE_CHECKING:
    from kubeloop.local.operator.driver import LocalStore

# retraining.pipeline.name in the local runtime's form: an importable module:function
RUNNER_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

log = logging.getLogger(__name__)


class LocalServing:
    """One ``kubeloop.serving.predictor`` process per version behind the local router."""

    def __init__(
        self,
        supervisor: Supervisor,
        model: str,
        registry_uri: str,
        router_url: str,
        *,
        logger_url: str | None = None,
        feast_repo: Path | None = None,
        prometheus_root: Path | None = None,
        stage_server: Path | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self.sup = supervisor
        self.stage_server = stage_server  # the warm server predictors are forked from
        self.model = model
        self.registry_uri = registry_uri
        self.router_url = router_url.rstrip("/")
        self.logger_url = logger_url
        self.feast_repo = feast_repo  # the online store entity-key requests are enriched from
        self.prometheus_root = prometheus_root
        self.http = http or httpx.Client(timeout=5)

    def _name(self, version: str) -> str:
        return f"predictor-{self.model}-{version}"

    def ensure(self, version: str) -> None:
        from kubeloop.local.servers import start_predictor

        start_predictor(
            self.sup,
            self.model,
            version,
            self.registry_uri,
            logger_url=self.logger_url,
            feast_repo=self.feast_repo,
            name=self._name(version),
            wait=False,
            stage_server=self.stage_server,
        )

    def url(self, version: str) -> str:
        record = self.sup.running(self._name(version))
        if record is None:
            raise RuntimeError(f"predictor {self.model}/{version} is not running")
        return f"http://127.0.0.1:{record.ports['http']}"

    def ready_versions(self, versions: set[str]) -> frozenset[str]:
        return frozenset(v for v in versions if v and self.sup.healthy(self._name(v)))

    def current_split(self) -> dict | None:
        response = self.http.get(f"{self.router_url}/admin/split")
        return response.json() if response.status_code == 200 else None

    def apply(self, action: SetTraffic) -> None:
        """Starts what the split needs, switches the router once it is ready, stops the rest
        (but the versions the core keeps warm)."""
        wanted = {action.stable} | ({action.canary} if action.canary else set())
        for version in wanted:
            self.ensure(version)
        ready = self.ready_versions(wanted)
        self._write_targets()
        if action.stable not in ready:
            return  # keep the old split until the new stable answers
        canary = action.canary if action.canary in ready else None
        split = {
            "model": self.model,
            "stable": {"version": action.stable, "url": self.url(action.stable)},
            "canary": {"version": canary, "url": self.url(canary)} if canary else None,
            "canary_percent": action.canary_percent if canary else 0,
            "shadow": False,
        }
        current = self.current_split()
        if not current or any(current.get(k) != v for k, v in split.items()):
            response = self.http.put(f"{self.router_url}/admin/split", json=split)
            if response.status_code >= 300:
                raise RuntimeError(f"router refused split {split}: {response.text}")
        for record in self.sup.list():
            version = record.labels.get("version")
            if (
                record.labels.get("model") == self.model
                and version not in wanted | action.keep_warm
            ):
                self.sup.stop(record.name)
        self._write_targets()

    def _write_targets(self) -> None:
        if self.prometheus_root is None:
            return
        targets = [
            f"127.0.0.1:{r.ports['http']}"
            for r in self.sup.list()
            if r.labels.get("model") == self.model and self.sup.running(r.name)
        ]
        write_targets(self.prometheus_root, f"predictors-{self.model}", targets)


class LocalRunSubmitter:
    """Runs each retraining run as a ``runjob`` subprocess; idempotent by run name. ``env``
    is added to the runs' environment (a caller outside the runtime gives its ``env()``:
    its Ray head, its stage server)."""

    def __init__(
        self,
        supervisor: Supervisor,
        runs_dir: Path,
        registry_uri: str,
        runner: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.sup = supervisor
        self.runs_dir = Path(runs_dir)
        self.registry_uri = registry_uri
        self.runner = runner
        self.env = env

    def runner_for(self, run: SubmitRun) -> str:
        """The spec's ``retraining.pipeline.name`` when it names a ``module:function``
        (the local runtime's form); otherwise (a cluster pipeline name) the default runner."""
        return run.pipeline if RUNNER_SPEC.match(run.pipeline) else self.runner

    def submit(self, run: SubmitRun) -> None:
        folder = self.runs_dir / run.run_name
        if (folder / "params.json").exists():
            return  # submitted before (perhaps by a previous operator process)
        folder.mkdir(parents=True, exist_ok=True)
        params = {**run.parameters, "registry_uri": self.registry_uri, "run_name": run.run_name}
        (folder / "params.json").write_text(json.dumps(params))
        self.sup.start(
            f"run-{run.run_name}",
            [
                "-m", "kubeloop.local.operator.runjob",
                "--runner", self.runner_for(run),
                "--params", json.dumps(params),
                "--result", str((folder / "result.json").resolve()),
            ],
            env=self.env,
            labels={"run": run.run_name},
            job=True,
        )  # fmt: skip

    def status(self, run_name: str) -> RunObservation:
        folder = self.runs_dir / run_name
        if not (folder / "params.json").exists():
            return RunObservation(run_name, RunState.NOT_FOUND)
        result = folder / "result.json"
        if result.exists():
            data = json.loads(result.read_text())
            return RunObservation(
                run_name, RunState(data["state"]), data.get("version"), data.get("message", "")
            )
        if self.sup.running(f"run-{run_name}"):
            return RunObservation(run_name, RunState.RUNNING)
        tail = self.sup.log_tail(f"run-{run_name}", 500)
        message = f"run exited without a result: {tail}"
        return RunObservation(run_name, RunState.FAILED, None, message)


class LocalActuators(SharedActuators):
    """What one local pass acts on: predictors and the router (``LocalServing``), runs as
    subprocesses (``LocalRunSubmitter``), decisions in ``<name>.events.jsonl``."""

    def __init__(
        self,
        name: str,
        model: str,
        registry: Any,
        drift: DriftServiceClient,
        serving: LocalServing,
        submitter: Any,
        store: LocalStore,
        now: datetime,
    ) -> None:
        super().__init__(model, registry, drift)
        self.name, self.serving, self.submitter = name, serving, submitter
        self.store, self.now = store, now

    def ready_versions(self, versions: frozenset[str]) -> frozenset[str]:
        return self.serving.ready_versions(set(versions))

    def serving_mode(self) -> ServingMode:
        # The local router splits traffic between predictor processes itself.
        return ServingMode("LocalRouter", "the local runtime's router", splits_traffic=True)

    def storage_problem(self) -> str:
        return ""  # local predictors read the registry with the runtime's own settings

    def run_status(self, run_name: str) -> RunObservation:
        return self.submitter.status(run_name)

    def set_traffic(self, action: SetTraffic) -> None:
        self.serving.apply(action)

    def submit_run(self, action: SubmitRun) -> None:
        self.submitter.submit(action)

    def record_decision(self, action: RecordDecision) -> None:
        self.store.record(self.name, action, self.now)
