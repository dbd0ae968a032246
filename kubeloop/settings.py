"""One typed settings object for kubeloop.

Values come, in increasing priority, from defaults, a YAML config file
(``kubeloop.yaml`` in the working directory, or the path in ``KUBELOOP_CONFIG``),
and ``KUBELOOP_*`` environment variables (nested fields with ``__``, e.g.
``KUBELOOP_OBJECTIVES__MIN_ROC_AUC=0.9``). They are read once, validated, and any
problem is reported with the offending field named.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

CONFIG_ENV = "KUBELOOP_CONFIG"
DEFAULT_CONFIG_FILE = "kubeloop.yaml"


class SettingsError(ValueError):
    """Raised when the configuration is invalid; the message names each bad field."""


class Objectives(BaseModel):
    """The minimum a model must reach, from the problem definition (the gate's first test)."""

    min_roc_auc: float = Field(0.80, ge=0.0, le=1.0, description="minimum ROC-AUC")
    min_pr_auc: float = Field(
        0.20, ge=0.0, le=1.0, description="minimum PR-AUC (average precision)"
    )
    max_ece: float = Field(0.10, ge=0.0, le=1.0, description="maximum expected calibration error")
    min_accuracy: float = Field(
        0.0, ge=0.0, le=1.0, description="minimum accuracy at the threshold"
    )


class GateSettings(BaseModel):
    """How a candidate is compared with the current champion on the same window."""

    champion_tolerance: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="largest drop in compare_metric versus the champion that still passes",
    )
    champion_alpha: float = Field(
        0.05,
        gt=0.0,
        le=1.0,
        description="a drop beyond the tolerance refuses the candidate only when the champion "
        "is better at this significance (one-sided exact McNemar test on the window's rows, "
        "for window_accuracy); 1 refuses on the drop alone",
    )
    compare_metric: str = Field(
        "window_accuracy",
        description="metric used for the champion comparison: by default what the canary "
        "judges, accuracy, each model at the threshold re-chosen on the window",
    )


class S3Settings(BaseModel):
    """S3-compatible object storage (MinIO) used when the registry URI is ``s3://``."""

    endpoint: str = Field("localhost:9000", description="host:port of the S3 endpoint")
    access_key: str | None = Field(None, description="access key (or AWS_ACCESS_KEY_ID)")
    secret_key: str | None = Field(None, description="secret key (or AWS_SECRET_ACCESS_KEY)")
    secure: bool = Field(False, description="use TLS")
    region: str | None = Field(
        None, description="region of the endpoint; empty means none (the chart's ConfigMap)"
    )

    @model_validator(mode="after")
    def _credentials_from_aws_env(self) -> S3Settings:
        self.access_key = self.access_key or os.environ.get("AWS_ACCESS_KEY_ID")
        self.secret_key = self.secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
        self.region = self.region or None
        return self


class TrainingSettings(BaseModel):
    """Defaults for the training stage; pipeline parameters override them per run."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers")
    use_gpu: bool = False
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(512, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    hidden_units: int = Field(32, ge=1)
    members: int = Field(1, ge=1, description="networks averaged as one deep ensemble")
    seed: int = 7


class ClusterSettings(BaseModel):
    """Names kubeloop's cluster objects refer to. The defaults are what the Helm chart
    creates for the release ``kubeloop`` in the namespace ``kubeloop`` (the chart sets them
    for its own release; tests/unit/test_serving_manifests.py checks they agree)."""

    storage_service_account: str = Field(
        "kubeloop-s3",
        pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
        description="ServiceAccount whose S3 credentials KServe's storage initializer uses",
    )
    s3_endpoint: str = Field(
        "kubeloop-minio.kubeloop.svc.cluster.local:9000",
        pattern=r"^[^/:]+(:[0-9]+)?$",
        description="in-cluster host:port of the chart's MinIO Service",
    )


class KubeloopSettings(BaseSettings):
    """Everything kubeloop reads from its environment, validated at startup."""

    model_config = SettingsConfigDict(
        env_prefix="KUBELOOP_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    home: Path = Field(Path("var"), description="root folder of local state")
    data_dir: Path | None = Field(None, description="where source data lives (default: HOME/data)")
    registry_uri: str | None = Field(
        None,
        description="model registry: a local directory or s3://bucket/prefix (default: HOME/registry)",
    )
    model_name: str = Field("fraud-detector", pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    ray_address: str | None = Field(
        None, description="Ray cluster address; unset starts or reuses a local instance"
    )
    stage_server: Path | None = Field(
        None,
        description="Unix socket of a warm stage server (kubeloop.local.stages) that local "
        "pipeline runs fork their stages from; unset, or not answering: a process per stage",
    )
    feast_repo: Path = Field(Path("feature_repo"), description="the Feast repository (definitions)")
    feast_dir: Path | None = Field(None, description="Feast local state (default: HOME/feast)")
    objectives: Objectives = Objectives()
    gate: GateSettings = GateSettings()
    s3: S3Settings = S3Settings()
    training: TrainingSettings = TrainingSettings()
    cluster: ClusterSettings = ClusterSettings()

    @field_validator("registry_uri")
    @classmethod
    def _registry_scheme(cls, value: str | None) -> str | None:
        if value and "://" in value and not value.startswith(("s3://", "file://")):
            raise ValueError(
                f"registry_uri must be a local path or s3://bucket/prefix, got {value!r}"
            )
        if value and value.startswith("s3://") and len(value) <= len("s3://"):
            raise ValueError("registry_uri s3:// needs a bucket name")
        return value

    @model_validator(mode="after")
    def _derive_paths(self) -> KubeloopSettings:
        self.data_dir = self.data_dir or self.home / "data"
        self.feast_dir = self.feast_dir or self.home / "feast"
        self.registry_uri = self.registry_uri or str(self.home / "registry")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlFileSource(settings_cls))


class _YamlFileSource(PydanticBaseSettingsSource):
    """Reads the optional YAML config file (lowest priority after defaults)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = Path(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG_FILE))
        if not path.exists():
            if CONFIG_ENV in os.environ:
                raise SettingsError(f"{CONFIG_ENV}={path} does not exist")
            return {}
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SettingsError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise SettingsError(
                f"config file {path} must hold a mapping, not {type(data).__name__}"
            )
        return data


def load_settings(**overrides: Any) -> KubeloopSettings:
    """Builds and validates settings; raises :class:`SettingsError` naming each bad field."""
    try:
        return KubeloopSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid kubeloop settings: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> KubeloopSettings:
    """The process-wide settings, loaded once on first use (never at import time)."""
    return load_settings()
