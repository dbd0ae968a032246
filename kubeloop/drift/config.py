"""Settings of the drift service: defaults, ``KUBELOOP_DRIFT_*`` variables, per-model overrides.

The service environment has pydantic<2 (alibi-detect 0.11.4), so these are plain
dataclasses validated by hand; every problem names the field.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from kubeloop.drift.events import clip

ENV_PREFIX = "KUBELOOP_DRIFT_"
METHODS = ("cusum", "alibi")


class DriftConfigError(ValueError):
    """An invalid drift setting; the message names the field."""


# Each detector family's own ERT setting (None: derived from ``ert``).
FAMILY_ERTS = {
    family: f"{family}_ert"
    for family in ("mmd", "cvm", "fet", "prediction", "error_rate", "predicted_class")
}


@dataclass(frozen=True)
class DetectorSettings:
    """What each watched version runs. Overridable per model in ``POST /v1/watch``."""

    ert: float = 500.0  # expected run time without drift, in detector steps
    # How the input, score and error-rate detectors test: "cusum" (CUSUM charts on
    # indicators of the reference's quantile bins and categories, exact thresholds in
    # milliseconds) or "alibi" (alibi-detect's MMD, Cramér–von Mises and Fisher exact
    # tests, thresholds simulated: seconds to minutes per version, cached on disk).
    method: str = "cusum"
    bins: int = 5  # quantile intervals per number (cusum)
    odds_ratio: float = 2.0  # the rise in an indicator's odds each chart is tuned to (cusum)
    mmd: bool = True
    mmd_window: int = 20
    mmd_every: int = 8  # the multivariate detector reads one instance in mmd_every
    mmd_reference_rows: int = 1000
    mmd_bootstraps: int = 1000
    univariate: bool = True  # cvm + fet per feature (master switch)
    cvm: bool = True
    fet: bool = True
    univariate_windows: tuple[int, ...] = (20, 60)
    univariate_every: int = 4
    cvm_reference_rows: int = 300  # CVM set-up grows with its square; FET reads the whole sample
    univariate_bootstraps: int = 2000
    prediction: bool = True
    error_rate: bool = True
    error_windows: tuple[int, ...] = (50, 150)
    error_rate_ert: float | None = None  # in labels; by default ert
    # One family's own ERT (in its steps), by default ert: a ModelDeployment's
    # spec.monitoring.detectors sets them per detector.
    mmd_ert: float | None = None
    cvm_ert: float | None = None
    fet_ert: float | None = None
    prediction_ert: float | None = None
    # Label shift: Bernoulli CUSUM charts on the share of positive predictions (both
    # directions, odds x2), exact thresholds in milliseconds; ERT in predictions, by
    # default ert x univariate_every.
    predicted_class: bool = True
    predicted_class_ert: float | None = None
    accuracy_window: int = 500
    report_window: int = 2000
    # Drift explained: batch KS / chi-square per feature on the latest explain_rows
    # instances against the reference, every explain_every_seconds (no set-up to arm).
    explain_rows: int = 300
    explain_every_seconds: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "ert": math.isfinite(self.ert) and self.ert > 1,
            "method": self.method in METHODS,
            "bins": 2 <= self.bins <= 50,
            "odds_ratio": math.isfinite(self.odds_ratio) and 1.05 <= self.odds_ratio <= 100,
            "mmd_window": self.mmd_window >= 2,
            "mmd_every": self.mmd_every >= 1,
            "univariate_every": self.univariate_every >= 1,
            "mmd_reference_rows": self.mmd_reference_rows >= 4 * self.mmd_window,
            "cvm_reference_rows": self.cvm_reference_rows >= 50,
            "univariate_windows": len(self.univariate_windows) > 0
            and min(self.univariate_windows) >= 2,
            "error_windows": len(self.error_windows) > 0 and min(self.error_windows) >= 2,
            **{
                name: (value := getattr(self, name)) is None or (math.isfinite(value) and value > 1)
                for name in FAMILY_ERTS.values()
            },
            "accuracy_window": self.accuracy_window >= 10,
            "report_window": self.report_window >= 50,
            "explain_rows": 50 <= self.explain_rows <= self.report_window,
            "explain_every_seconds": math.isfinite(self.explain_every_seconds)
            and self.explain_every_seconds > 0,
            "mmd_bootstraps": self.mmd_bootstraps >= 100,
            "univariate_bootstraps": self.univariate_bootstraps >= 100,
        }
        if bad := [name for name, ok in checks.items() if not ok]:
            values = ", ".join(f"{n}={clip(getattr(self, n))}" for n in bad)
            raise DriftConfigError(f"invalid drift detector setting(s): {values}")

    def ert_of(self, family: str) -> float:
        """A detector family's expected run time without drift, in its own steps: its own
        setting, else ``ert`` (the predicted-class charts read every prediction, so their
        default is ``ert`` x ``univariate_every``)."""
        own = getattr(self, FAMILY_ERTS[family])
        if own is not None:
            return own
        return self.ert * self.univariate_every if family == "predicted_class" else self.ert

    def with_overrides(self, overrides: dict[str, Any] | None) -> DetectorSettings:
        if not overrides:
            return self
        if not isinstance(overrides, dict):
            raise DriftConfigError("'detectors' must be an object of detector settings")
        known = {f.name: f for f in fields(self)}
        if unknown := sorted(map(str, set(overrides) - set(known))):
            named = ", ".join(clip(n) for n in unknown[:5])
            raise DriftConfigError(f"unknown detector setting(s) {named}; known: {sorted(known)}")
        values = {}
        for name, value in overrides.items():
            current = getattr(self, name)
            if current is None and value is None:  # an optional setting back to its default
                values[name] = None
                continue
            values[name] = _coerce(name, value, float if current is None else type(current))
        return replace(self, **values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce(name: str, value: Any, kind: type) -> Any:
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if kind is tuple:
            items = json.loads(value) if isinstance(value, str) else value
            return tuple(int(v) for v in items)
        if isinstance(value, bool):
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError, OverflowError, RecursionError):
        raise DriftConfigError(
            f"drift setting {name}={clip(value)} is not a valid {kind.__name__}"
        ) from None


@dataclass(frozen=True)
class S3Access:
    """The S3 endpoint of an ``s3://`` registry, read from the same variables as
    ``kubeloop.settings`` (``KUBELOOP_S3__*``, credentials also ``AWS_*``): this
    environment has no pydantic 2 for the settings class itself."""

    endpoint: str = "localhost:9000"
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    secure: bool = False
    region: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> S3Access:
        def get(name: str) -> str | None:
            return env.get(f"KUBELOOP_S3__{name.upper()}")

        return cls(
            endpoint=get("endpoint") or cls.endpoint,
            access_key=get("access_key") or env.get("AWS_ACCESS_KEY_ID"),
            secret_key=get("secret_key") or env.get("AWS_SECRET_ACCESS_KEY"),
            secure=_coerce("KUBELOOP_S3__SECURE", get("secure") or "false", bool),
            region=get("region"),
        )


@dataclass(frozen=True)
class ServiceSettings:
    registry_uri: str = "var/registry"
    s3: S3Access = field(default_factory=S3Access)  # for an s3:// registry
    cache_dir: Path = Path("var/drift-cache")
    detectors: DetectorSettings = field(default_factory=DetectorSettings)
    pending_limit: int = 50_000  # requests waiting for their response
    feedback_limit: int = 200_000  # answered requests kept for delayed labels
    # Versions tracked from their events before anyone watches them (an LRU), and the rows
    # of instances and of labels each version holds for its detectors until they are armed.
    unwatched_limit: int = 8
    backlog_rows: int = 20_000
    absent_ttl_seconds: float = 5.0  # how long "not in the registry" stands for a version
    max_body_bytes: int = 8 * 1024 * 1024  # any request body; larger is a 413
    allow_bsl_alibi: bool = False  # newer alibi-detect releases are Business Source licensed

    def __post_init__(self) -> None:
        checks = {
            "unwatched_limit": self.unwatched_limit >= 1,
            "backlog_rows": self.backlog_rows >= 0,
            "max_body_bytes": self.max_body_bytes >= 1,
            "absent_ttl_seconds": math.isfinite(self.absent_ttl_seconds)
            and self.absent_ttl_seconds >= 0,
        }
        if bad := [name for name, ok in checks.items() if not ok]:
            values = ", ".join(f"{n}={clip(getattr(self, n))}" for n in bad)
            raise DriftConfigError(f"invalid drift service setting(s): {values}")

    @classmethod
    def from_env(cls, **overrides: Any) -> ServiceSettings:
        env = os.environ
        home = Path(env.get("KUBELOOP_HOME", "var"))
        detector_env = {
            f.name: env[ENV_PREFIX + f.name.upper()]
            for f in fields(DetectorSettings)
            if ENV_PREFIX + f.name.upper() in env
        }
        values: dict[str, Any] = {
            "registry_uri": env.get("KUBELOOP_REGISTRY_URI", str(home / "registry")),
            "s3": S3Access.from_env(env),
            "cache_dir": Path(env.get(ENV_PREFIX + "CACHE_DIR", home / "drift-cache")),
            "detectors": DetectorSettings().with_overrides(detector_env),
            "allow_bsl_alibi": _coerce(
                "allow_bsl_alibi", env.get(ENV_PREFIX + "ALLOW_BSL_ALIBI", "false"), bool
            ),
        }
        for name, kind in (("unwatched_limit", int), ("backlog_rows", int),
                           ("absent_ttl_seconds", float), ("max_body_bytes", int)):  # fmt: skip
            if (raw := env.get(ENV_PREFIX + name.upper())) is not None:
                values[name] = _coerce(name, raw, kind)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


LAST_APACHE_ALIBI = (0, 11, 4)


def check_alibi_license(version: str, allow_bsl: bool) -> None:
    """alibi-detect after 0.11.4 is under the Business Source License: opt in explicitly."""
    parts = tuple(int(p) for p in version.split(".")[:3] if p.isdigit())
    if parts > LAST_APACHE_ALIBI and not allow_bsl:
        raise DriftConfigError(
            f"alibi-detect {version} is Business Source licensed; kubeloop pins 0.11.4 (Apache-2.0). "
            f"Set {ENV_PREFIX}ALLOW_BSL_ALIBI=true to use it anyway."
        )
