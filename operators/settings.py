"""Operator settings: one typed object, prefix ``KUBELOOP_OPERATOR_``, loaded once at startup."""

from __future__ import annotations

from pathlib import Path

from kubeloop.operators.crd import Placement
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    namespace: str | None = Field(None, description="watch one namespace (default: all)")
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
    prometheus_root: Path | None = Field(
        None,
        description="local runtime: the local Prometheus folder; predictors go to its targets/",
    )
    predictor_placement: Placement = Field(
        Placement(),
        description="the release's node placement of predictors (JSON: nodeSelector, "
        "tolerations, affinity, runtimeClassName, priorityClassName), under each "
        "ModelDeployment's own spec.serving values",
    )
    metrics_port: int = Field(
        8081, ge=0, le=65535, description="port of the operator's /metrics (0: off)"
    )


def load_operator_settings(**overrides) -> OperatorSettings:
    """Validates settings; raises ``ValueError`` naming each bad field."""
    try:
        return OperatorSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"KUBELOOP_OPERATOR_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ValueError(f"invalid operator settings: {problems}") from None
