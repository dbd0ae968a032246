"""Operator settings: one typed object, prefix ``KUBELOOP_OPERATOR_``, loaded once at startup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Self

from kubeloop.operators.crd import Placement
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# A Kubernetes namespace name (RFC 1123 label).
DnsLabel = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBELOOP_OPERATOR_", extra="forbid")

    prometheus_url: str = Field("http://127.0.0.1:9090", description="Prometheus HTTP API base URL")
    prometheus_timeout_seconds: float = Field(5.0, gt=0, description="timeout of one PromQL query")
    min_window_seconds: int = Field(
        30, ge=1, description="shortest range used in increase()/rate() (≥ 2 scrape intervals)"
    )
    poll_interval_seconds: float = Field(15.0, gt=0, description="analysis timer interval")
    retry_delay_seconds: float = Field(
        30.0, gt=0, description="delay before retrying a transient failure"
    )
    namespaces: Annotated[list[DnsLabel], NoDecode] = Field(
        default_factory=list,
        description="namespaces the cluster operator reconciles (JSON list); kopf watches these",
    )
    all_namespaces: bool = Field(
        False, description="the cluster operator reconciles every namespace (explicit opt-in)"
    )
    kserve_namespace: str = Field(
        "kserve", description="KServe's namespace (its inferenceservice-config ConfigMap)"
    )
    kfp_host: str | None = Field(None, description="KFP API endpoint (cluster)")
    drift_service_url: str = Field(
        "http://127.0.0.1:8300", description="drift service (local runtime)"
    )
    router_url: str = Field(
        "http://127.0.0.1:8080", description="traffic router admin API (local runtime)"
    )
    state_dir: Path = Field(Path("var/runtime/operator"), description="local driver state")
    local_runner: str = Field(
        "kubeloop.local.pipelines:run_training_pipeline",
        description="module:function the local runtime calls for a retraining run",
    )
    feast_store: Path | None = Field(
        None,
        description="local runtime: a prepared Feast repository whose online store predictors "
        "enrich entity-key requests from (unset: callers send every feature)",
    )
    feast_config_map: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
        description="cluster: the ConfigMap (feature_store.yaml) predictors enrich entity-key "
        "requests with, mounted into every InferenceService of the ModelDeployment's "
        "namespace (the chart sets it when feast.enabled; unset: callers send every feature)",
    )
    prometheus_root: Path | None = Field(
        None,
        description="local runtime: the local Prometheus folder; predictors go to its targets/",
    )
    predictor_placement: Annotated[Placement, NoDecode] = Field(
        Placement(),
        description="the release's node placement of predictors (JSON: nodeSelector, "
        "tolerations, affinity, runtimeClassName, priorityClassName), under each "
        "ModelDeployment's own spec.serving values",
    )
    metrics_port: int = Field(
        8081, ge=0, le=65535, description="port of the operator's /metrics (0: off)"
    )

    @field_validator("namespaces", "predictor_placement", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        """JSON values from the environment; not JSON is a validation error of the field."""
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ValueError(f"not valid JSON ({exc})") from None

    @model_validator(mode="after")
    def _one_scope(self) -> Self:
        if self.all_namespaces and self.namespaces:
            raise ValueError(
                "set either KUBELOOP_OPERATOR_NAMESPACES or KUBELOOP_OPERATOR_ALL_NAMESPACES, "
                f"not both (namespaces {self.namespaces})"
            )
        return self

    def watched_namespaces(self) -> list[str]:
        """The namespaces kopf watches ([] with ``all_namespaces``: cluster-wide). A cluster
        operator serves a chosen scope: the predictors' storage ServiceAccount exists only
        where the chart put it."""
        if not (self.all_namespaces or self.namespaces):
            raise ValueError(
                "invalid operator settings: KUBELOOP_OPERATOR_NAMESPACES (a JSON list, e.g. "
                '["ml"]) or KUBELOOP_OPERATOR_ALL_NAMESPACES=true must say which namespaces '
                "the operator reconciles"
            )
        return list(self.namespaces)


def load_operator_settings(**overrides) -> OperatorSettings:
    """Validates settings; raises ``ValueError`` naming each bad field."""
    try:
        return OperatorSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"KUBELOOP_OPERATOR_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            if err["loc"]
            else err["msg"].removeprefix("Value error, ")
            for err in exc.errors()
        )
        raise ValueError(f"invalid operator settings: {problems}") from None
