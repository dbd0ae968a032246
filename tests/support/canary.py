"""Canary decisions on candidates of known quality: the scenario the canary-decision test
(tests/local/test_canary_decisions.py) asserts on and the canary benchmark (bench/canary)
measures.

The stable version is trained with plain torch and published (v1). Each candidate is the
stable network with another decision threshold, chosen by bisection on a large held-out
sample drawn from the same generator as the traffic, so that its accuracy on that
distribution is lower by a known gap (2, 3, 5 points); the equal candidate is the stable
bundle republished. The scores of every candidate equal the stable version's, so only the
labels can tell them apart: a worse candidate must be caught by live accuracy.

``run_scenario`` starts the local runtime as ``kubeloop up`` does (Prometheus, the drift
service, the router, the operator), applies a ``ModelDeployment``, replays labelled
traffic through the router (ground truth posted to the drift service a few seconds
later), publishes the candidates one after another and waits for each decision. During
the equal candidate's first step, and again right after its promotion, it kills
Prometheus and restarts it later, recording when it was down. Decisions are read from the
operator's event log (every decision, with its time and evidence).
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

MODEL = "fraud-detector"
# Decisions that move a rollout (holds and notes do not).
VERDICTS = ("step", "promote", "rollback", "confirm")
CHECKS = ["error_rate", "latency_p99", "score_distribution", "live_accuracy"]


@dataclass(frozen=True)
class ScenarioConfig:
    gaps: tuple[float, ...] = (0.02, 0.03, 0.05, 0.0)  # accuracy gaps; 0 is the equal candidate
    seed: int = 0
    rate: float = 600.0  # instances per second through the router
    batch: int = 40  # instances per request (the router splits requests)
    label_delay_seconds: float = 2.0
    heldout_rows: int = 60_000
    gap_tolerance: float = 0.003
    steps: tuple[int, ...] = (25, 50, 100)
    min_samples: int = 30
    min_feedback: int = 200
    min_step_seconds: int = 5
    max_step_seconds: int = 180
    watch_window_seconds: int = 8
    # The largest drop that may pass. A candidate 2 points worse must sit clearly beyond it:
    # at 0.03 it lies inside the tolerance, and the check passes it about one run in nine
    # (a simulation of the sequential check at this scenario's label rates) before it fails.
    max_accuracy_drop: float = 0.015
    alpha: float = 0.05
    outage_seconds: float = 8.0  # Prometheus down during a step
    decision_timeout_seconds: float = 150.0
    outages: bool = True

    @property
    def duration_seconds(self) -> float:
        """Longest the traffic may run: every candidate at its timeout, and the outages."""
        per = self.decision_timeout_seconds + self.outage_seconds + self.watch_window_seconds
        return 60.0 + per * len(self.gaps)


@dataclass(frozen=True)
class Candidate:
    gap: float  # the accuracy gap aimed at (0: the stable bundle republished)
    threshold: float
    heldout_gap: float  # stable minus candidate accuracy on the held-out sample
    heldout_accuracy: float

    @property
    def label(self) -> str:
        return "equal" if self.gap == 0 else f"{self.gap * 100:g} points worse"


@dataclass(frozen=True)
class Outage:
    phase: str  # "step" (a canary step) or "watch" (the watch window after promotion)
    version: str
    down_at: float  # wall time Prometheus was killed (its process gone)
    up_at: float  # wall time the restarted Prometheus answered ready


@dataclass
class CandidateRun:
    candidate: Candidate
    version: str
    published_at: float
    canary_at: float | None = None
    decision: dict[str, Any] | None = None  # the rollback or promote event
    served: int = 0  # predictions the candidate made until the decision
    labelled: int = 0  # of which labelled by then
    live_gap: float | None = None  # stable minus candidate accuracy on the labelled traffic
    seconds_to_detect: float | None = None  # the operator's last estimate before the decision

    @property
    def decided_at(self) -> float | None:
        return event_time(self.decision) if self.decision else None


@dataclass
class ScenarioResult:
    config: ScenarioConfig
    stable_version: str
    stable_heldout_accuracy: float
    runs: list[CandidateRun] = field(default_factory=list)
    outages: list[Outage] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    traffic_sent: int = 0  # requests
    traffic_failed: int = 0
    traffic_seconds: float = 0.0
    traffic_errors: list[str] = field(default_factory=list)  # the last few, if any
    feedback_rejected: int = 0
    wall_seconds: float = 0.0

    def verdicts_between(self, start: float, end: float) -> list[dict[str, Any]]:
        return [
            e for e in self.events if e["decision"] in VERDICTS and start <= event_time(e) <= end
        ]

    def for_version(self, version: str, *decisions: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("version") == version and (not decisions or e["decision"] in decisions)
        ]


def event_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()


# --- candidates of known quality -----------------------------------------------------------
def heldout_sample(seed: int, rows: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows and labels from the traffic's generator (``build_stream``, stationary), another seed."""
    from kubeloop.demo.stream import build_stream

    stream = build_stream(
        "stationary", rate=1000.0, onset_seconds=rows / 2000.0, duration_seconds=rows / 1000.0,
        seed=seed,
    )  # fmt: skip
    return pd.DataFrame(stream.instances), stream.labels


def threshold_for_gap(
    scores: np.ndarray, labels: np.ndarray, base_threshold: float, gap: float
) -> tuple[float, float]:
    """The threshold below ``base_threshold`` whose accuracy is ``gap`` lower, by bisection
    over the sample's own scores (lowering the threshold adds false positives: below the
    base, accuracy falls as it goes down). Returns the threshold and the gap it gives."""
    base = float(((scores >= base_threshold) == labels).mean())

    def gap_at(t: float) -> float:
        return base - float(((scores >= t) == labels).mean())

    if gap == 0:
        return base_threshold, 0.0
    ranked = np.unique(scores[scores < base_threshold])  # candidate thresholds, ascending
    if not len(ranked) or gap_at(float(ranked[0])) < gap:
        raise ValueError(f"no threshold gives a gap of {gap}: the sample has too few negatives")
    lo, hi = 0, len(ranked) - 1  # gap_at(ranked[lo]) >= gap
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if gap_at(float(ranked[mid])) >= gap else (lo, mid)
    t = min((float(ranked[lo]), float(ranked[hi])), key=lambda t: abs(gap_at(t) - gap))
    return t, gap_at(t)


def derive_candidates(bundle, config: ScenarioConfig) -> tuple[list[Candidate], float]:
    """Candidates for ``config.gaps`` and the stable bundle's held-out accuracy."""
    frame, labels = heldout_sample(config.seed + 1000, config.heldout_rows)
    scores = bundle.predict_proba(frame)
    base = bundle.config.threshold
    stable_accuracy = float(((scores >= base) == labels).mean())
    out = []
    for gap in config.gaps:
        t, measured = threshold_for_gap(scores, labels, base, gap)
        if abs(measured - gap) > config.gap_tolerance:
            raise ValueError(f"threshold {t:.4g} gives a gap of {measured:.4f}, not {gap}")
        out.append(Candidate(gap, t, measured, stable_accuracy - measured))
    return out, stable_accuracy


def publish_candidate(registry, stable_folder: Path, candidate: Candidate, stable_version: str):
    """Publishes the stable network with the candidate's threshold (gate passed)."""
    from kubeloop.model import ModelBundle
    from kubeloop.model.publish import publish_bundle
    from kubeloop.registry import REFERENCE_FILE

    bundle = ModelBundle.load(stable_folder)
    bundle = replace(bundle, config=replace(bundle.config, threshold=candidate.threshold))
    reference = pd.read_parquet(stable_folder / REFERENCE_FILE)
    reference["prediction"] = (reference["prediction_score"] >= candidate.threshold).astype(int)
    return publish_bundle(
        registry, MODEL, bundle, reference=reference,
        metrics={"accuracy": candidate.heldout_accuracy, "heldout_gap": candidate.heldout_gap},
        lineage={
            "derived_from": stable_version, "threshold": candidate.threshold,
            "pipeline_name": __name__, "target_gap": candidate.gap,
        },
        gate={"passed": True, "decision": "passed",
              "reasons": f"a candidate {candidate.label} than {stable_version} (held-out)"},
    )  # fmt: skip


# --- the runtime ---------------------------------------------------------------------------
def deployment(config: ScenarioConfig, drift_url: str, registry_uri: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MODEL},
        "spec": {
            "model": {"name": MODEL, "registryUri": registry_uri},
            "serving": {"loggerUrl": drift_url},
            "rollout": {
                "steps": list(config.steps),
                "minSamples": config.min_samples,
                "minStepSeconds": config.min_step_seconds,
                "maxStepSeconds": config.max_step_seconds,
                # a step without a verdict waits for a person: a rollback comes from evidence
                "onStepTimeout": "Hold",
                "watchWindowSeconds": config.watch_window_seconds,
                "analysis": {
                    "requiredChecks": CHECKS,
                    "alpha": config.alpha,
                    "maxAccuracyDrop": config.max_accuracy_drop,
                    "minFeedback": config.min_feedback,
                    "maxErrorRateIncrease": 0.05,
                    # two shared cores: latency is noisy, judge it loosely
                    "latencyP99Tolerance": 3.0,
                    "latencyP99SlackSeconds": 0.25,
                },
            },
            # what the drift service runs (PREDICTION_ONLY_DETECTORS)
            "monitoring": {"detectors": [{"name": "prediction", "ert": 2000}]},
            "retraining": {"enabled": False},
        },
    }


def kill_prometheus(runtime) -> float:
    """SIGKILLs Prometheus's process group; returns the time it was gone."""
    from kubeloop.local.wait import wait_until

    record = runtime.supervisor.running("prometheus")
    assert record is not None, "Prometheus is not running"
    os.killpg(record.pid, signal.SIGKILL)
    wait_until(lambda: runtime.supervisor.running("prometheus") is None, timeout=10,
               interval=0.05, what="Prometheus gone")  # fmt: skip
    return time.time()


def restart_prometheus(runtime) -> float:
    """Starts Prometheus again (its launcher, port and data); returns when it answered ready."""
    runtime.start_part("prometheus")
    runtime.supervisor.wait_healthy("prometheus", 60)
    return time.time()


class _Watcher:
    def __init__(self, store, echo: Callable[[str], None]) -> None:
        self.store, self.echo, self.seen = store, echo, 0
        # the operator's last estimate of the time to detect maxAccuracyDrop, per candidate
        self.seconds_to_detect: dict[str, float] = {}

    def note_status(self) -> None:
        status = self.store.state(MODEL).get("status", {})
        estimate = (status.get("analysis") or {}).get("secondsToDetect")
        if status.get("candidateVersion") and estimate is not None:
            self.seconds_to_detect[status["candidateVersion"]] = estimate

    def events(self) -> list[dict[str, Any]]:
        events = self.store.events(MODEL)
        for e in events[self.seen :]:
            self.echo(f"  {e['time'][11:19]} {e['decision']:<8} {e.get('version') or '':<4} "
                      f"{e.get('reason', '')}: {e.get('message', '')[:160]}")  # fmt: skip
        self.seen = max(self.seen, len(events))
        return events

    def wait(self, what: str, predicate, timeout: float, *, on_status: bool = False) -> dict:
        """The first event matching ``predicate`` (with ``on_status``: the status, when it matches)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if on_status:
                status = self.store.state(MODEL).get("status", {})
                if predicate(status):
                    return status
            else:
                found = next((e for e in self.events() if predicate(e)), None)
                if found is not None:
                    return found
            self.note_status()
            time.sleep(0.2)
        status = self.store.state(MODEL).get("status", {})
        progressing = [c for c in status.get("conditions", []) if c["type"] == "Progressing"]
        raise TimeoutError(f"no {what} after {timeout:.0f}s; Progressing: {progressing}")


def _serving_stats(answers, version: str, until: float) -> tuple[int, int]:
    served = labelled = 0
    for a in answers:
        if a.version == version and a.sent_at <= until:
            served += len(a.predicted)
            if a.labelled_at is not None and a.labelled_at <= until:
                labelled += len(a.predicted)
    return served, labelled


def _live_gap(answers, stable: str, version: str) -> float | None:
    """Stable minus candidate accuracy on the labelled answers while the candidate served."""
    own = [a for a in answers if a.version == version and a.labelled_at is not None]
    if not own:
        return None
    start, end = own[0].sent_at, own[-1].sent_at
    ref = [
        a for a in answers if a.version == stable and a.labelled_at and start <= a.sent_at <= end
    ]

    def accuracy(rows) -> float | None:
        n = sum(len(a.predicted) for a in rows)
        return sum(a.correct for a in rows) / n if n else None

    acc_c, acc_s = accuracy(own), accuracy(ref)
    return None if acc_c is None or acc_s is None else acc_s - acc_c


def run_scenario(
    config: ScenarioConfig,
    home: Path,
    *,
    drift_cache: Path,
    echo: Callable[[str], None] = print,
) -> ScenarioResult:
    from kubeloop.demo.stream import build_stream
    from kubeloop.demo.traffic import TrafficReplayer
    from kubeloop.local.drift import PREDICTION_ONLY_DETECTORS
    from kubeloop.local.operator.driver import LocalStore
    from kubeloop.local.runtime import LocalRuntime, RuntimePorts
    from kubeloop.model import ModelBundle
    from kubeloop.registry import ModelRegistry
    from kubeloop.training.quick import publish_quick_version

    started = time.monotonic()
    home = Path(home).resolve()
    runtime = LocalRuntime(
        home,
        RuntimePorts.free(),
        operator_env={
            "KUBELOOP_OPERATOR_POLL_INTERVAL_SECONDS": "1",
            "KUBELOOP_OPERATOR_MIN_WINDOW_SECONDS": "4",
        },
        drift_env=PREDICTION_ONLY_DETECTORS,
        drift_cache=drift_cache,
        # no watchdog: it would restart a killed Prometheus within a second, and the
        # scenario chooses how long Prometheus stays down
        keep_running=False,
    )
    registry = ModelRegistry(str(runtime.registry_uri))
    stable = publish_quick_version(registry, MODEL, seed=config.seed + 100, n_accounts=400)
    stable_folder = home / "stable"
    registry.download(MODEL, stable.version, stable_folder)
    candidates, stable_accuracy = derive_candidates(ModelBundle.load(stable_folder), config)
    echo(f"stable {stable.version}: held-out accuracy {stable_accuracy:.4f}; candidates "
         + ", ".join(f"{c.label} (threshold {c.threshold:.4g}, gap {c.heldout_gap:.4f})"
                     for c in candidates))  # fmt: skip
    stream = build_stream(
        "stationary", rate=config.rate, onset_seconds=10.0,
        duration_seconds=config.duration_seconds, seed=config.seed,
    )  # fmt: skip
    result = ScenarioResult(config, stable.version, stable_accuracy)
    store = LocalStore(runtime.state_dir)
    watcher = _Watcher(store, echo)
    replayer = None
    try:
        runtime.start([])
        manifest = home / f"{MODEL}.yaml"
        manifest.write_text(
            yaml.safe_dump(deployment(config, runtime.url("drift"), str(runtime.registry_uri)))
        )
        runtime.apply(manifest)
        watcher.wait(f"{stable.version} deployed", lambda e: e["decision"] == "deploy", 120)
        replayer = TrafficReplayer(
            stream, runtime.url("router"), runtime.url("drift"), MODEL, rate=config.rate,
            batch=config.batch, label_delay=config.label_delay_seconds, labelled_path=None,
        )  # fmt: skip
        replayer.start()
        for candidate in candidates:
            version = publish_candidate(registry, stable_folder, candidate, stable.version)
            run = CandidateRun(candidate, version.version, time.time())
            result.runs.append(run)
            echo(f"published {run.version}: {candidate.label}")
            canary = watcher.wait(
                f"canary of {run.version}",
                lambda e, v=run.version: e["decision"] == "canary" and e.get("version") == v,
                config.decision_timeout_seconds,
            )
            run.canary_at = event_time(canary)
            equal = candidate.gap == 0
            if equal and config.outages:
                watcher.wait(
                    f"{run.version}'s first step observing evidence",
                    lambda s, v=run.version: (
                        s.get("candidateVersion") == v
                        and (s.get("analysis") or {}).get("observedSeconds", 0) > 0
                    ),
                    config.decision_timeout_seconds,
                    on_status=True,
                )
                down = kill_prometheus(runtime)
                echo(f"Prometheus killed during {run.version}'s first step")
                time.sleep(config.outage_seconds)
                result.outages.append(
                    Outage("step", run.version, down, restart_prometheus(runtime))
                )
                echo("Prometheus restarted")
            run.decision = watcher.wait(
                f"a verdict on {run.version}",
                lambda e, v=run.version: (
                    e["decision"] in ("rollback", "promote") and e.get("version") == v
                ),
                config.decision_timeout_seconds,
            )
            if run.decision["decision"] == "promote" and config.outages:
                down = kill_prometheus(runtime)
                echo(f"Prometheus killed in {run.version}'s watch window")
                time.sleep(config.watch_window_seconds + 4)
                result.outages.append(
                    Outage("watch", run.version, down, restart_prometheus(runtime))
                )
                echo("Prometheus restarted")
            if run.decision["decision"] == "promote":
                watcher.wait(
                    f"confirmation of {run.version}",
                    lambda e, v=run.version: (
                        e["decision"] in ("confirm", "rollback") and e.get("version") == v
                    ),
                    config.decision_timeout_seconds,
                )
            time.sleep(config.label_delay_seconds + 0.5)  # labels of the last answers
            run.served, run.labelled = _serving_stats(replayer.answers, run.version, run.decided_at)
            run.live_gap = _live_gap(replayer.answers, stable.version, run.version)
            run.seconds_to_detect = watcher.seconds_to_detect.get(run.version)
    finally:
        if replayer is not None:
            replayer.stop()
            result.traffic_sent, result.traffic_failed = replayer.sent, replayer.failed
            result.traffic_seconds = time.time() - (replayer.started_at or time.time())
            result.traffic_errors = list(replayer.errors)
            result.feedback_rejected = replayer.feedback_unwatched + replayer.feedback_failed
        result.events = watcher.events()
        runtime.stop()
        result.wall_seconds = time.monotonic() - started
    return result


def default_drift_cache() -> Path:
    """Calibrated drift thresholds kept between runs (they depend on the reference size only)."""
    return Path(tempfile.gettempdir()) / "kubeloop-canary-drift-cache"
