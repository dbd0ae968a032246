"""The reference sample of a registry version, read without pydantic or torch.

The drift service's environment pins pydantic<2 (alibi-detect 0.11.4), so the
version's ``schema.json`` is read here as plain JSON rather than through
``kubeloop.data.schema``; only the fields the detectors need are used.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kubeloop.registry import REFERENCE_FILE, ModelRegistry
from kubeloop.registry.recalibration import PRIOR_FILE
from kubeloop.registry.registry import VersionNotFound
from kubeloop.registry.stores import open_store

SCHEMA_FILE = "schema.json"
SCORE_COLUMN = "prediction_score"
PREDICTION_COLUMN = "prediction"


class ReferenceError(ValueError):
    """The version's reference sample or schema is missing or unusable."""


@dataclass
class FeatureSpec:
    """Which features the detectors watch and how each is encoded."""

    numeric: list[str]
    categorical: dict[str, list[str]]
    label: str
    integer: set[str] = field(default_factory=set)  # numeric but discrete: jittered for rank tests
    binary: set[str] = field(default_factory=set)  # 0/1 integer features: FET
    # Key columns (entity, id) a request may carry next to the features; not watched.
    keys: set[str] = field(default_factory=set)
    # Features of the entity's profile (the feature view's): one observation per entity and
    # snapshot, however many rows carry it; the entity key names whose profile it is.
    profile: list[str] = field(default_factory=list)
    entity: str | None = None

    @property
    def names(self) -> list[str]:
        return [*self.numeric, *self.categorical]


@dataclass
class Reference:
    """Raw reference features, scores, predictions and labels of one version."""

    model: str
    version: str
    spec: FeatureSpec
    frame: pd.DataFrame
    digest: str  # sha256 of the reference file and schema: the detector cache key

    @property
    def scores(self) -> np.ndarray:
        return self.frame[SCORE_COLUMN].to_numpy(dtype=np.float64)

    @property
    def predictions(self) -> np.ndarray:
        return self.frame[PREDICTION_COLUMN].to_numpy(dtype=np.int64)

    @property
    def labels(self) -> np.ndarray:
        return self.frame[self.spec.label].to_numpy(dtype=np.int64)


def feature_spec(schema: dict) -> FeatureSpec:
    """Feature roles and types from a ``DatasetSchema`` JSON document."""
    try:
        columns = schema["columns"]
        label = next(c["name"] for c in columns if c.get("role") == "label")
    except (KeyError, TypeError, StopIteration):
        raise ReferenceError(
            "schema.json needs 'columns' with one column of role 'label'"
        ) from None
    numeric, categorical, integer, binary = [], {}, set(), set()
    keys = {c["name"] for c in columns if c.get("role") in ("entity", "id")}
    entity = next((c["name"] for c in columns if c.get("role") == "entity"), None)
    profile = [
        c["name"]
        for c in columns
        if c.get("role", "feature") == "feature" and c.get("source") == "feature_view"
    ]
    for col in columns:
        if col.get("role", "feature") != "feature":
            continue
        name, dtype = col["name"], col["dtype"]
        if dtype == "category":
            categorical[name] = list(col.get("categories") or [])
        elif dtype in ("int", "float", "bool"):
            numeric.append(name)
            if dtype in ("int", "bool"):
                integer.add(name)
                if dtype == "bool" or (col.get("min") == 0 and col.get("max") == 1):
                    binary.add(name)
        else:
            raise ReferenceError(
                f"feature {name!r} has dtype {dtype!r}, which the drift detectors cannot watch"
            )
    if not numeric and not categorical:
        raise ReferenceError("schema.json declares no features")
    return FeatureSpec(
        numeric=numeric,
        categorical=categorical,
        label=label,
        integer=integer,
        binary=binary,
        keys=keys,
        profile=profile,
        entity=entity,
    )


def reference_from_bytes(
    model: str, version: str, parquet: bytes, schema_json: bytes, prior_json: bytes | None = None
) -> Reference:
    """Builds a :class:`Reference`, checking the columns docs/contracts.md promises. A
    version recalibrated for label shift (``prior.json``) gets its sample re-weighted to
    the prior it is for (:func:`at_prior`)."""
    try:
        spec = feature_spec(json.loads(schema_json))
    except json.JSONDecodeError as exc:
        raise ReferenceError(f"{model}/{version} schema.json is not JSON: {exc}") from None
    frame = pd.read_parquet(io.BytesIO(parquet))
    needed = [*spec.names, SCORE_COLUMN, PREDICTION_COLUMN, spec.label]
    if missing := [c for c in needed if c not in frame.columns]:
        raise ReferenceError(f"{model}/{version} reference.parquet lacks column(s) {missing}")
    # the entity key, when the sample keeps it, tells one account's profile from another's
    if spec.entity and spec.entity in frame.columns:
        needed.append(spec.entity)
    frame = frame[needed].dropna().reset_index(drop=True)
    if prior_json is not None:
        try:
            prior = json.loads(prior_json)
            frame = at_prior(
                frame, spec.label, float(prior["target_prior"]), float(prior["threshold"])
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ReferenceError(f"{model}/{version} {PRIOR_FILE} is unusable: {exc}") from None
    if len(frame) < 100:
        raise ReferenceError(
            f"{model}/{version} reference sample has {len(frame)} complete rows; need >= 100"
        )
    digest = hashlib.sha256(parquet + b"\0" + schema_json + b"\0" + (prior_json or b"")).hexdigest()
    return Reference(model=model, version=version, spec=spec, frame=frame, digest=digest)


def load_reference(registry_uri: str, model: str, version: str, s3: object = None) -> Reference:
    """Reads ``reference.parquet`` and ``schema.json`` of ``model``/``version`` from the
    registry (``s3``: the endpoint and credentials of an ``s3://`` one)."""
    registry = ModelRegistry(store=open_store(registry_uri, s3))
    resolved = registry.resolve(model, version)
    try:
        manifest = registry.get(model, resolved)  # read once, for every file below
        names = [REFERENCE_FILE, SCHEMA_FILE, *[PRIOR_FILE] * (PRIOR_FILE in manifest.files)]
        files = registry.read_files(manifest, names)
    except VersionNotFound:
        raise
    except Exception as exc:
        raise ReferenceError(f"{model}/{resolved} has no usable reference sample: {exc}") from exc
    return reference_from_bytes(
        model, resolved, files[REFERENCE_FILE], files[SCHEMA_FILE], files.get(PRIOR_FILE)
    )


def at_prior(frame: pd.DataFrame, label: str, target: float, threshold: float) -> pd.DataFrame:
    """The sample as the world of positive share ``target`` would draw it under label shift
    (P(x|y) fixed): one class whole, the other subsampled (without replacement, seeded), and
    the predictions those rows get at ``threshold``."""
    if not 0.0 < target < 1.0 or not 0.0 < threshold < 1.0:
        raise ValueError(f"target prior and threshold must be in (0, 1): {target}, {threshold}")
    positive = frame[label].to_numpy() == 1
    n1, n0 = int(positive.sum()), int((~positive).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError("the reference sample has one class only")
    keep1, keep0 = n1, n0
    if n1 / (n1 + n0) < target:  # more positives: fewer negatives
        keep0 = max(1, round(n1 * (1 - target) / target))
    else:
        keep1 = max(1, round(n0 * target / (1 - target)))
    rng = np.random.default_rng(0)
    rows = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(positive), size=min(keep1, n1), replace=False),
        rng.choice(np.flatnonzero(~positive), size=min(keep0, n0), replace=False),
    ]))  # fmt: skip
    out = frame.iloc[rows].reset_index(drop=True)
    out[PREDICTION_COLUMN] = (out[SCORE_COLUMN].to_numpy() >= threshold).astype(np.int64)
    return out
