"""Where retraining runs go: the interface both runtimes implement, and the KFP one.

A submitter must be idempotent by run name: ``submit`` of a name that already exists does
nothing, so a replayed decision or a restarted operator never starts a second run.

``spec.retraining.dataWindow`` travels as the run parameter ``data_window``: local runners
read it themselves; the compiled training pipeline declares ``window_start`` and
``window_end`` instead, so the KFP submitter turns it into those bounds at submission
(:func:`pipeline_parameters`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from kubeloop.operators.crd import window_seconds
from kubeloop.operators.reconciler.types import RunObservation, RunState, SubmitRun

KFP_STATES = {
    "PENDING": RunState.PENDING,
    "RUNNING": RunState.RUNNING,
    "PAUSED": RunState.RUNNING,
    "CANCELING": RunState.RUNNING,
    "SUCCEEDED": RunState.SUCCEEDED,
    "SKIPPED": RunState.SUCCEEDED,
    "FAILED": RunState.FAILED,
    "CANCELED": RunState.FAILED,
}


DATA_WINDOW = "data_window"


def pipeline_parameters(parameters: dict[str, str], now: datetime) -> dict[str, str]:
    """The run's parameters as the training pipeline declares them: ``data_window`` (e.g.
    ``7d``) becomes ``window_start`` = now − window and ``window_end`` = now (exclusive),
    ISO 8601 in UTC, unless the spec's parameters set a bound themselves."""
    out = dict(parameters)
    window = out.pop(DATA_WINDOW, None)
    if window is None:
        return out
    end = now.astimezone(UTC)
    start = end - timedelta(seconds=window_seconds(window))
    out.setdefault("window_start", start.isoformat())
    out.setdefault("window_end", end.isoformat())
    return out


class RunSubmitter(Protocol):
    def submit(self, run: SubmitRun) -> None: ...

    def status(self, run_name: str) -> RunObservation: ...


class KfpRunSubmitter:
    """Submits runs of a pinned pipeline version with ``kfp.Client``."""

    def __init__(self, client, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.client = client
        self.now = now

    def _experiment_id(self, name: str) -> str:
        try:
            return self.client.get_experiment(experiment_name=name).experiment_id
        except ValueError:  # kfp raises ValueError when no experiment has that name
            return self.client.create_experiment(name=name).experiment_id

    def _find(self, run_name: str):
        flt = json.dumps(
            {
                "predicates": [
                    {"operation": "EQUALS", "key": "display_name", "stringValue": run_name}
                ]
            }
        )
        runs = self.client.list_runs(filter=flt, page_size=5).runs or []
        return runs[0] if runs else None

    def submit(self, run: SubmitRun) -> None:
        if self._find(run.run_name) is not None:
            return
        pipeline_id = self.client.get_pipeline_id(run.pipeline)
        if pipeline_id is None:
            raise ValueError(f"KFP has no pipeline named {run.pipeline!r}; upload it first")
        self.client.run_pipeline(
            experiment_id=self._experiment_id(run.experiment),
            job_name=run.run_name,
            params=pipeline_parameters(dict(run.parameters), self.now()),
            pipeline_id=pipeline_id,
            version_id=run.pipeline_version,
        )

    def status(self, run_name: str) -> RunObservation:
        found = self._find(run_name)
        if found is None:
            return RunObservation(run_name, RunState.NOT_FOUND)
        state = KFP_STATES.get(str(found.state), RunState.RUNNING)
        message = getattr(found.error, "message", "") if found.error else ""
        # The registered version is looked up in the registry by run id (see gather()).
        return RunObservation(run_name, state, None, message or "", found.run_id)
