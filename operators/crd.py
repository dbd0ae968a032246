"""The ``ModelDeployment`` custom resource (``kubeloop.io/v1alpha1``), defined once here.

The pydantic models validate specs in both runtimes and generate the CRD's OpenAPI
schema (``manifests/crds/``, via :func:`render_crds`). Field names are camelCase on
the wire (Kubernetes convention) and snake_case in Python.
"""

from __future__ import annotations

import copy
from enum import StrEnum
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

GROUP = "kubeloop.io"
VERSION = "v1alpha1"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["mdep"]
API_VERSION = f"{GROUP}/{VERSION}"
HISTORY_LIMIT = 20
# One-shot commands from `kubeloop rollout promote|rollback NAME` travel as annotations.
PROMOTE_ANNOTATION = f"{GROUP}/promote"
ROLLBACK_ANNOTATION = f"{GROUP}/rollback"


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=True
    )

    def wire(self) -> dict[str, Any]:
        """The camelCase dict as stored in the resource."""
        return self.model_dump(by_alias=True, mode="json", exclude_none=True)


# --- spec --------------------------------------------------------------------------------
class VersionPolicy(StrEnum):
    PINNED = "Pinned"
    LATEST_PASSED = "LatestPassed"


class ModelSource(_Model):
    """Which model to serve and how its versions are chosen from the registry."""

    name: str = Field(
        ..., pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description="registry model name"
    )
    registry_uri: str | None = Field(
        None, description="registry (local path or s3://); default from settings"
    )
    version_policy: VersionPolicy = Field(
        VersionPolicy.LATEST_PASSED,
        description="Pinned serves `version`; LatestPassed serves the newest version whose gate passed",
    )
    version: str | None = Field(None, pattern=r"^v[0-9]+$", description="the pinned version (v<N>)")

    @model_validator(mode="after")
    def _pinned_needs_version(self) -> ModelSource:
        if self.version_policy == VersionPolicy.PINNED and not self.version:
            raise ValueError("model.version is required when model.versionPolicy is Pinned")
        return self


class Resources(_Model):
    cpu: str = Field("500m", description="CPU request and limit per replica")
    memory: str = Field("1Gi", description="memory request and limit per replica")
    gpu: int = Field(0, ge=0, description="nvidia.com/gpu per replica")


class Serving(_Model):
    replicas: int = Field(1, ge=1, le=100, description="minimum replicas of each version")
    max_replicas: int = Field(3, ge=1, le=100, description="maximum replicas (autoscaling)")
    resources: Resources = Resources()
    runtime_image: str | None = Field(None, description="predictor image (default: kubeloop's)")
    logger_url: str | None = Field(
        None, description="payload logger sink; default: the operator's drift service"
    )


class ApprovalMode(StrEnum):
    AUTOMATIC = "Automatic"
    MANUAL = "Manual"


class CheckName(StrEnum):
    """The canary analysis' checks (``status.history[*].evidence.checks`` keys)."""

    ERROR_RATE = "error_rate"
    LATENCY_P99 = "latency_p99"
    SCORE_DISTRIBUTION = "score_distribution"
    LIVE_ACCURACY = "live_accuracy"


class Analysis(_Model):
    """How a canary step is judged against the stable version (see docs/contracts.md metrics)."""

    alpha: float = Field(
        0.05, gt=0, lt=0.5, description="error probability of each sequential check"
    )
    max_error_rate_increase: float = Field(
        0.02,
        ge=0,
        le=1,
        description="largest canary-minus-stable server error rate that still passes",
    )
    max_accuracy_drop: float = Field(
        0.03,
        gt=0,
        le=1,
        description="largest stable-minus-canary live accuracy that still passes; a canary "
        "worse than stable with confidence 1 - alpha fails",
    )
    min_feedback: int = Field(
        100, ge=1, description="labelled predictions per version before live accuracy is judged"
    )
    max_score_shift: float = Field(
        0.25,
        gt=0,
        le=1,
        description="largest total-variation distance between canary and stable score histograms",
    )
    latency_p99_tolerance: float = Field(
        0.5,
        ge=0,
        description="allowed relative p99 latency increase (0.5 = canary p99 ≤ 1.5 × stable)",
    )
    latency_p99_slack_seconds: float = Field(
        0.01, ge=0, description="absolute p99 slack added to the relative tolerance"
    )
    required_checks: list[CheckName] | None = Field(
        None,
        description="checks that must pass before a step, promotion or confirmation; a skipped "
        "or inconclusive required check holds. Default: every check, live_accuracy whenever "
        "labels flow for the stable version",
    )
    power: float = Field(
        0.8,
        ge=0.5,
        lt=1,
        description="power at which status.analysis estimates the time to detect an accuracy "
        "drop of maxAccuracyDrop",
    )


class StepTimeoutAction(StrEnum):
    ROLLBACK = "Rollback"
    HOLD = "Hold"


class Rollout(_Model):
    steps: list[int] = Field(
        default_factory=lambda: [10, 25, 50, 100], description="canary traffic percents, increasing"
    )
    min_samples: int = Field(
        200, ge=1, description="requests per version in a step before judging it"
    )
    min_step_seconds: int = Field(60, ge=0, description="minimum time in each step")
    max_step_seconds: int = Field(
        3600,
        ge=1,
        description="a step (or the watch after promotion, beyond its window) without a verdict "
        "this long ends as onStepTimeout says",
    )
    on_step_timeout: StepTimeoutAction = Field(
        StepTimeoutAction.ROLLBACK,
        description="Rollback: a step that gathers no verdict by maxStepSeconds is rolled back; "
        "Hold: it waits for `kubeloop rollout promote|rollback` (Stalled=True)",
    )
    analysis: Analysis = Analysis()
    approval: ApprovalMode = Field(
        ApprovalMode.AUTOMATIC, description="Manual waits for `rollout promote`"
    )
    watch_window_seconds: int = Field(
        600,
        ge=0,
        description="after promotion, roll back if the new stable degrades within this window",
    )
    paused: bool = Field(False, description="hold the rollout where it is")

    @field_validator("steps")
    @classmethod
    def _steps_increase(cls, steps: list[int]) -> list[int]:
        if not steps:
            raise ValueError("rollout.steps needs at least one step")
        if any(not 0 < s <= 100 for s in steps):
            raise ValueError(f"rollout.steps must be percents in (0, 100], got {steps}")
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"rollout.steps must strictly increase, got {steps}")
        if steps[-1] != 100 or len(steps) < 2:
            raise ValueError(
                f"rollout.steps must hold at least one canary step and end at 100, got {steps}"
            )
        return steps


class DetectorName(StrEnum):
    MMD = "mmd"
    CVM = "cvm"
    FET = "fet"
    CHI2 = "chi2"
    PREDICTION = "prediction"
    ERROR_RATE = "error_rate"


class Detector(_Model):
    name: DetectorName
    ert: int | None = Field(
        None, ge=1, description="expected run time between false alarms (online detectors)"
    )
    threshold: float | None = Field(
        None, gt=0, description="p-value or statistic threshold (offline detectors)"
    )


class Monitoring(_Model):
    detectors: list[Detector] = Field(
        default_factory=lambda: [Detector(name=DetectorName.MMD, ert=500)],
        description="drift detectors the drift service runs on the stable version",
    )
    drift_duration_seconds: int = Field(
        120, ge=0, description="drift must persist this long before it triggers retraining"
    )


class PipelineRef(_Model):
    name: str = Field(
        "kubeloop-training",
        description="pipeline name (KFP); locally a module:function runner, else the default runner",
    )
    version: str | None = Field(None, description="pinned pipeline version id (KFP)")
    experiment: str = Field("kubeloop", description="KFP experiment")


class Retraining(_Model):
    enabled: bool = True
    pipeline: PipelineRef = PipelineRef()
    parameters: dict[str, str] = Field(default_factory=dict, description="pipeline parameters")
    data_window: str = Field("7d", pattern=r"^[0-9]+[smhd]$", description="training data window")
    cooldown_seconds: int = Field(3600, ge=0, description="minimum time between retraining runs")
    max_attempts: int = Field(3, ge=1, description="runs per stable version before giving up")
    backoff_seconds: int = Field(
        300, ge=0, description="base delay after a failed run (doubles each time)"
    )


class ModelDeploymentSpec(_Model):
    model: ModelSource
    serving: Serving = Serving()
    rollout: Rollout = Rollout()
    monitoring: Monitoring = Monitoring()
    retraining: Retraining = Retraining()


# --- status ------------------------------------------------------------------------------
class Condition(_Model):
    type: str
    status: str = Field(..., pattern=r"^(True|False|Unknown)$")
    reason: str = Field(..., pattern=r"^[A-Za-z]([A-Za-z0-9]*)$")
    message: str = ""
    last_transition_time: str
    observed_generation: int = 0


class Decision(_Model):
    time: str
    decision: str = Field(..., description="deploy, step, hold, promote, rollback, retrain, ...")
    reason: str
    message: str = ""
    version: str | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)


class RetrainingStatus(_Model):
    run_name: str | None = None
    state: str | None = Field(None, description="Submitted, Running, Succeeded, Failed")
    for_version: str | None = Field(
        None, description="the stable version whose drift started the run"
    )
    attempts: int = 0
    failures: int = 0
    submitted_at: str | None = None
    finished_at: str | None = None
    registered_version: str | None = None


class AnalysisStatus(_Model):
    """The evidence the current canary step or post-promotion watch is judged on."""

    evidence_since: str | None = Field(
        None,
        description="start of the evidence window: the step's (or watch's) start, or the first "
        "observed pass after a blind period (metrics or drift service unavailable, operator down)",
    )
    observed_seconds: float = Field(
        0.0, ge=0, description="time of the step or watch window observed with evidence available"
    )
    last_observed_at: str | None = Field(
        None, description="the last pass with evidence available (unset after a blind pass)"
    )
    blind_since: str | None = Field(
        None, description="evidence unavailable since (metrics or drift service down)"
    )
    seconds_to_detect: float | None = Field(
        None,
        description="estimated time to detect an accuracy drop of maxAccuracyDrop at the "
        "configured power, from the observed traffic and label rates (null: no labels flow)",
    )
    detectability: str = Field("", description="what seconds_to_detect means for this step")
    warned: bool = Field(
        False, description="a CannotDecideInTime warning was recorded for this window"
    )


class ModelDeploymentStatus(_Model):
    observed_generation: int = 0
    phase: str = "Pending"
    stable_version: str | None = None
    candidate_version: str | None = None
    previous_version: str | None = None
    canary_percent: int = 0
    step_index: int = 0
    step_started_at: str | None = None
    promoted_at: str | None = None
    watch_baseline: dict[str, float] = Field(default_factory=dict)
    analysis: AnalysisStatus = AnalysisStatus()
    rejected_versions: list[str] = Field(default_factory=list)
    drift_since: str | None = None
    drift: str = "None"
    retraining: RetrainingStatus = RetrainingStatus()
    handled_commands: list[str] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    history: list[Decision] = Field(default_factory=list, max_length=HISTORY_LIMIT)


class ModelDeployment(_Model):
    api_version: str = API_VERSION
    kind: str = KIND
    metadata: dict[str, Any]
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None


# --- CRD generation ----------------------------------------------------------------------
def _structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Turns a pydantic JSON schema into a Kubernetes structural OpenAPI v3 schema."""
    schema = copy.deepcopy(schema)
    if "$ref" in schema:
        target = defs[schema.pop("$ref").split("/")[-1]]
        merged = {**copy.deepcopy(target), **schema}
        return _structural(merged, defs)
    if "anyOf" in schema:
        options = [o for o in schema.pop("anyOf") if o.get("type") != "null"]
        nullable = len(options) == 1
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {options}")
        merged = {**_structural(options[0], defs), **schema}
        if nullable:
            merged["nullable"] = True
        schema = merged
    schema.pop("title", None)
    schema.pop("$defs", None)
    # JSON Schema 2020 writes exclusive bounds as numbers; OpenAPI v3.0 as flags.
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(schema.get(bound), int | float) and not isinstance(schema[bound], bool):
            schema[flag] = schema.pop(bound)
            schema[bound] = True
    if "default" in schema:
        if schema["default"] is None:
            schema.pop("default")
        else:
            schema["default"] = _drop_none(schema["default"])
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    if schema.get("type") == "object" or "properties" in schema:
        schema["type"] = "object"
        props = schema.get("properties")
        if props:
            schema["properties"] = {k: _structural(v, defs) for k, v in props.items()}
        extra = schema.pop("additionalProperties", None)
        # `additionalProperties: false` is implied by `properties` in a structural schema.
        if isinstance(extra, dict) and extra:
            schema["additionalProperties"] = _structural(extra, defs)
        elif not props:
            schema["x-kubernetes-preserve-unknown-fields"] = True
    if schema.get("type") == "array" and "items" in schema:
        schema["items"] = _structural(schema["items"], defs)
    if "enum" in schema and "type" not in schema:
        schema["type"] = "string"
    if schema == {} or (
        "type" not in schema and "x-kubernetes-preserve-unknown-fields" not in schema
    ):
        schema.setdefault("x-kubernetes-preserve-unknown-fields", True)
    return schema


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def _schema_of(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="serialization")
    return _structural(raw, raw.get("$defs", {}))


def crd_manifest() -> dict[str, Any]:
    spec_schema = _schema_of(ModelDeploymentSpec)
    status_schema = _schema_of(ModelDeploymentStatus)
    # Defaults already filled by pydantic would make `kubectl apply` output noisy: keep them
    # only in the description-bearing schema, where the API server applies them too.
    ready = ".status.conditions[?(@.type=='Ready')].status"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Ready", "type": "string", "jsonPath": ready},
                        {"name": "Stable", "type": "string", "jsonPath": ".status.stableVersion"},
                        {
                            "name": "Candidate",
                            "type": "string",
                            "jsonPath": ".status.candidateVersion",
                        },
                        {
                            "name": "Canary %",
                            "type": "integer",
                            "jsonPath": ".status.canaryPercent",
                        },
                        {"name": "Drift", "type": "string", "jsonPath": ".status.drift"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A model served from the registry with canary rollouts, "
                            "drift monitoring and drift-triggered retraining.",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                            "required": ["spec"],
                        }
                    },
                }
            ],
        },
    }


def render_crds() -> dict[str, str]:
    """Generator for ``kubeloop.generated``: the CRD YAML under ``manifests/crds/``."""
    from kubeloop.generated import GENERATED_HEADER

    header = GENERATED_HEADER.format(source="kubeloop.operators.crd")
    body = yaml.safe_dump(crd_manifest(), sort_keys=False, allow_unicode=True, width=100)
    return {f"manifests/crds/{PLURAL}.{GROUP}.yaml": f"{header}\n{body}"}


def parse_spec(spec: dict[str, Any]) -> ModelDeploymentSpec:
    """Validates a wire-format spec; raises ``ValueError`` naming each bad field."""
    from pydantic import ValidationError

    try:
        return ModelDeploymentSpec.model_validate(spec)
    except ValidationError as exc:
        problems = "; ".join(
            f"spec.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ValueError(f"invalid ModelDeployment: {problems}") from None
