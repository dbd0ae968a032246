"""Inputs and outputs of the reconciler core: observations in, actions out (plain data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    """``status.phase``: where the rollout of a ModelDeployment stands."""

    PENDING = "Pending"
    STABLE = "Stable"
    CANARY = "Canary"
    WATCHING = "Watching"


class Decision(StrEnum):
    """A decision's name in the status history, in Events (``action``) and metric labels."""

    DEPLOY = "deploy"
    CANARY = "canary"
    STEP = "step"
    HOLD = "hold"
    IGNORE = "ignore"
    PROMOTE = "promote"
    CONFIRM = "confirm"
    ROLLBACK = "rollback"
    DRIFT = "drift"
    RETRAIN = "retrain"
    RETRAINED = "retrained"
    RETRAIN_FAILED = "retrain-failed"
    ALERT = "alert"
    RECALIBRATE = "recalibrate"


class RunState(StrEnum):
    """A retraining run as the run backend reports it (``NotFound``: it lost the run) and as
    ``status.retraining.state`` records it (``Submitted`` until the backend reports it)."""

    SUBMITTED = "Submitted"
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    NOT_FOUND = "NotFound"


@dataclass(frozen=True)
class VersionMetrics:
    """One version's traffic over the current analysis window (since the step started)."""

    requests: float = 0.0
    server_errors: float = 0.0
    latency_p99: float | None = None
    score_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    feedback_correct: float = 0.0
    feedback_incorrect: float = 0.0
    # Accuracy estimated from the latest scores alone (the drift service's gauge), no labels.
    estimated_accuracy: float | None = None
    # Requests over the feedback's window when it reaches back further than the analysis
    # window (a canary's labels count from its first step); None: the same window.
    feedback_requests: float | None = None

    @property
    def feedback(self) -> float:
        return self.feedback_correct + self.feedback_incorrect


@dataclass(frozen=True)
class RegistryVersion:
    version: str
    gate_passed: bool
    run_id: str | None = None

    @property
    def number(self) -> int:
        return int(self.version[1:])


@dataclass(frozen=True)
class RunObservation:
    name: str
    state: RunState  # Pending, Running, Succeeded, Failed or NotFound
    registered_version: str | None = None
    message: str = ""
    run_id: str | None = None


@dataclass(frozen=True)
class ServingMode:
    """How the runtime serves a ModelDeployment: the mode's name as the runtime reports it
    (KServe's ``Serverless`` or ``RawDeployment``, the local router), where that was read,
    and whether it can split traffic between two versions (what a canary needs)."""

    name: str = "LocalRouter"
    source: str = "the local runtime"
    splits_traffic: bool = True


@dataclass(frozen=True)
class Observations:
    now: datetime
    metrics_ok: bool = True
    metrics_error: str = ""
    versions: dict[str, VersionMetrics] = field(default_factory=dict)
    registry_ok: bool = True
    registry_error: str = ""
    registry_versions: tuple[RegistryVersion, ...] = ()
    drift_detected: bool | None = None  # None: unknown (no data)
    drift_detail: dict[str, Any] = field(default_factory=dict)
    # Which version the drift flag is about (the labels of the series read; None: the
    # stable one) and how long ago the drift service last reset that version's detectors.
    drift_version: str | None = None
    drift_reset_age_seconds: float | None = None
    run: RunObservation | None = None
    ready_versions: frozenset[str] = frozenset()
    # The versions of this model the drift service watches now (None: unknown, e.g. the
    # service is unreachable). A restarted service has forgotten its watches.
    watched_versions: frozenset[str] | None = None
    commands: dict[str, str] = field(default_factory=dict)  # promote/rollback -> version
    # A gap between two passes longer than this means the operator was not running: the
    # time in between is not observed. The drivers derive it from their poll interval.
    max_pass_gap_seconds: float = 60.0
    # The shortest range the metrics queries use: a younger evidence window would count
    # traffic from before it.
    min_window_seconds: float = 0.0
    # The serving runtime's mode: without a traffic split no canary runs (a new version
    # waits for a manual promotion instead).
    serving_mode: ServingMode = field(default_factory=ServingMode)
    # Why a predictor in this namespace could not load a model version (a missing storage
    # ServiceAccount, ...); empty when nothing is missing. No predictor is created or
    # changed while it is set.
    storage_problem: str = ""

    def __post_init__(self) -> None:
        if self.now.tzinfo is None:
            raise ValueError("Observations.now must be timezone-aware (UTC)")


# --- actions ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SetTraffic:
    """Desired serving state: the stable version, the canary (if any) and its share, and
    versions that take no traffic but stay warm (the previous version while Watching, so a
    rollback of the promotion is instant where the runtime starts predictors itself)."""

    stable: str
    canary: str | None
    canary_percent: int
    keep_warm: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SubmitRun:
    """Start a retraining pipeline run; ``run_name`` is deterministic, so resubmitting is a no-op."""

    run_name: str
    pipeline: str
    pipeline_version: str | None
    experiment: str
    parameters: dict[str, str]


@dataclass(frozen=True)
class SetChampion:
    version: str


@dataclass(frozen=True)
class WatchDrift:
    """Have the drift service watch a version (reset its detectors on its reference sample):
    the stable version when it takes over or the service lost it, the canary so its
    delayed labels feed the live-accuracy analysis. ``detectors`` are the settings
    spec.monitoring.detectors asks for (empty: the service's own)."""

    version: str
    detectors: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class RecordDecision:
    decision: Decision
    reason: str
    message: str
    version: str | None
    evidence: dict[str, Any]


@dataclass(frozen=True)
class Recalibrate:
    """Publish ``version`` again with its decision threshold moved from the reference's
    positive prior to the estimated one (label shift; kubeloop.registry.recalibration).
    ``name`` is deterministic, so a replayed action publishes nothing twice."""

    version: str
    name: str
    reference_prior: float
    target_prior: float


Action = SetTraffic | SubmitRun | SetChampion | WatchDrift | RecordDecision | Recalibrate


def flagged_detectors(detail: dict[str, Any]) -> set[str]:
    """The detector families that flag in drift evidence (``detectors``: family → flag,
    1 flagged, 0 or absent not)."""
    flags = detail.get("detectors") or {}
    return {name for name, value in flags.items() if (value or 0) >= 1}


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
