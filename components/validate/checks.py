"""Data checks: pandera for types, ranges, categories, nullability and id uniqueness;
kubeloop's own checks for what pandera does not do directly (missing-value rates,
duplicate rows, label set and class balance, leakage, label timing).

Pure functions over data frames; each returns :class:`CheckResult` rows naming the
offending columns and a few offending row ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from kubeloop.data.schema import ColumnSpec, DatasetSchema

MAX_ROW_IDS = 5


@dataclass(frozen=True)
class ValidationConfig:
    """Thresholds of the data checks (defaults suit event-level tabular data)."""

    max_missing_rate: float = 0.05
    max_duplicate_rate: float = 0.0
    min_class_count: int = 10
    leakage_auc: float = 0.99


@dataclass
class CheckResult:
    name: str
    passed: bool
    details: str
    columns: list[str] = field(default_factory=list)
    row_ids: list[str] = field(default_factory=list)


def _row_ids(frame: pd.DataFrame, mask_or_index, schema: DatasetSchema) -> list[str]:
    rows = (
        frame.loc[mask_or_index]
        if not isinstance(mask_or_index, list)
        else frame.iloc[mask_or_index]
    )
    key = schema.id_column if schema.id_column in frame.columns else None
    values = rows[key] if key else rows.index.to_series()
    return [str(v) for v in values.head(MAX_ROW_IDS).tolist()]


# --- pandera -------------------------------------------------------------------------------
def _dtype(spec: ColumnSpec, series: pd.Series | None):
    if spec.dtype == "float":
        return "float64"
    if spec.dtype == "int":
        return (
            "Int64" if series is not None and isinstance(series.dtype, pd.Int64Dtype) else "int64"
        )
    if spec.dtype == "bool":
        return "boolean"
    if spec.dtype == "timestamp":
        return pd.DatetimeTZDtype("us", "UTC")
    return str


def _checks(spec: ColumnSpec) -> list[pa.Check]:
    checks = []
    if spec.min is not None:
        checks.append(pa.Check.ge(spec.min))
    if spec.max is not None:
        checks.append(pa.Check.le(spec.max))
    if spec.dtype == "category" and spec.categories:
        checks.append(pa.Check.isin(spec.categories))
    return checks


def pandera_schema(
    schema: DatasetSchema, frame: pd.DataFrame, only: list[str] | None = None
) -> pa.DataFrameSchema:
    """The declared schema as a pandera ``DataFrameSchema`` (``only``: a subset of columns)."""
    specs = [c for c in schema.columns if only is None or c.name in only]
    columns = {
        spec.name: pa.Column(
            _dtype(spec, frame.get(spec.name)),
            checks=_checks(spec),
            nullable=spec.nullable,
            unique=spec.role == "id",
            required=only is not None
            or not (spec.role == "feature" and spec.source == "feature_view"),
        )
        for spec in specs
    }
    return pa.DataFrameSchema(columns, name=schema.name, strict=False, coerce=False)


def check_schema(
    frame: pd.DataFrame,
    schema: DatasetSchema,
    table: str = "transactions",
    only: list[str] | None = None,
) -> list[CheckResult]:
    """One result per column pandera finds fault with (lazy: every failure is collected)."""
    try:
        pandera_schema(schema, frame, only).validate(frame, lazy=True)
    except SchemaErrors as exc:
        cases = exc.failure_cases
        results = []
        for column, group in cases.groupby(cases["column"].fillna("<table>"), sort=True):
            checks = sorted({str(c) for c in group["check"]})
            examples = group["failure_case"].dropna().astype(str).drop_duplicates().head(3).tolist()
            index = [int(i) for i in group["index"].dropna().tolist() if int(i) < len(frame)]
            results.append(
                CheckResult(
                    name=f"schema ({table})",
                    passed=False,
                    details=f"failed {', '.join(checks)}; e.g. {examples}",
                    columns=[str(column)],
                    row_ids=_row_ids(frame, sorted(set(index))[:MAX_ROW_IDS], schema)
                    if index
                    else [],
                )
            )
        return results
    return [
        CheckResult(f"schema ({table})", True, "types, ranges, categories, nullability, unique id")
    ]


# --- kubeloop's own checks -----------------------------------------------------------------
def check_missing(frame: pd.DataFrame, schema: DatasetSchema, cfg: ValidationConfig) -> CheckResult:
    rates = frame.isna().mean()
    bad = rates[rates > cfg.max_missing_rate]
    if bad.empty:
        return CheckResult(
            "missing values", True, f"every column ≤ {cfg.max_missing_rate:.0%} missing"
        )
    mask = frame[list(bad.index)].isna().any(axis=1)
    detail = ", ".join(f"{c}: {r:.1%}" for c, r in bad.items())
    return CheckResult(
        "missing values",
        False,
        f"missing-value rate above {cfg.max_missing_rate:.0%}: {detail}",
        list(bad.index),
        _row_ids(frame, mask, schema),
    )


def check_duplicates(
    frame: pd.DataFrame, schema: DatasetSchema, cfg: ValidationConfig
) -> CheckResult:
    # A re-delivered event usually gets a fresh id, so compare every column but the id.
    cols = [c for c in frame.columns if c != schema.id_column]
    dup = frame.duplicated(subset=cols, keep="first")
    rate = float(dup.mean())
    if rate <= cfg.max_duplicate_rate:
        return CheckResult("duplicate rows", True, f"{int(dup.sum())} duplicate rows")
    return CheckResult(
        "duplicate rows",
        False,
        f"{int(dup.sum())} rows ({rate:.2%}) repeat an earlier row in every column but the id",
        cols,
        _row_ids(frame, dup, schema),
    )


def check_labels(
    frame: pd.DataFrame, schema: DatasetSchema, cfg: ValidationConfig
) -> list[CheckResult]:
    label = frame[schema.label]
    bad = label.notna() & ~label.isin([0, 1])
    if bad.any():
        values = sorted({str(v) for v in label[bad].head(20)})
        return [
            CheckResult(
                "label set",
                False,
                f"labels must be in {{0, 1}}, found {values}",
                [schema.label],
                _row_ids(frame, bad, schema),
            )
        ]
    counts = label.value_counts().reindex([0, 1], fill_value=0)
    few = {int(k): int(v) for k, v in counts.items() if v < cfg.min_class_count}
    balance = CheckResult(
        "class balance",
        not few,
        f"class counts {dict((int(k), int(v)) for k, v in counts.items())}"
        + (f"; fewer than {cfg.min_class_count} of class {sorted(few)}" if few else ""),
        [schema.label] if few else [],
    )
    return [CheckResult("label set", True, "labels ⊆ {0, 1}"), balance]


def _auc(x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(y, x))
    return max(auc, 1.0 - auc)


def check_leakage(frame: pd.DataFrame, schema: DatasetSchema, cfg: ValidationConfig) -> CheckResult:
    """A feature that alone predicts the label (near-)perfectly is almost surely leakage."""
    y = frame[schema.label]
    if y.nunique() < 2 or not y.isin([0, 1]).all():
        return CheckResult("leakage", True, "skipped: needs both label classes")
    leaks, details = [], []
    for spec in schema.features:
        if spec.name not in frame.columns:
            continue
        col = frame[spec.name]
        ok = col.notna()
        if ok.sum() < 2 or y[ok].nunique() < 2:
            continue
        if spec.dtype in ("category", "string", "bool"):
            purity = y[ok].groupby(col[ok].astype(str)).agg(lambda s: s.nunique())
            if (purity == 1).all():
                leaks.append(spec.name)
                details.append(f"{spec.name}: each value maps to a single label")
            continue
        auc = _auc(col[ok].astype(float).to_numpy(), y[ok].to_numpy())
        if auc >= cfg.leakage_auc:
            leaks.append(spec.name)
            details.append(f"{spec.name}: single-feature ROC-AUC {auc:.3f}")
    if not leaks:
        return CheckResult("leakage", True, f"no single feature reaches ROC-AUC {cfg.leakage_auc}")
    return CheckResult("leakage", False, "; ".join(details), leaks)


def check_label_timing(frame: pd.DataFrame, schema: DatasetSchema) -> CheckResult:
    """The label must become known at or after the event (else it leaks into features)."""
    lt = schema.label_timestamp
    if lt is None or lt not in frame.columns:
        return CheckResult("label timing", True, "no label_timestamp column declared")
    early = frame[lt].notna() & (frame[lt] < frame[schema.timestamp])
    if not early.any():
        return CheckResult("label timing", True, f"{lt} ≥ {schema.timestamp} on every row")
    return CheckResult(
        "label timing",
        False,
        f"{int(early.sum())} rows have {lt} before {schema.timestamp} (label known before the event)",
        [lt, schema.timestamp],
        _row_ids(frame, early, schema),
    )


def check_feature_timing(accounts: pd.DataFrame, schema: DatasetSchema) -> CheckResult:
    """Feature snapshots must not be created before the time they describe."""
    early = accounts["created"] < accounts["event_timestamp"]
    if not early.any():
        return CheckResult(
            "feature timing", True, "every snapshot created at or after its event_timestamp"
        )
    return CheckResult(
        "feature timing",
        False,
        f"{int(early.sum())} account snapshots have created before event_timestamp",
        ["created", "event_timestamp"],
        [str(v) for v in accounts.loc[early, schema.entity].head(MAX_ROW_IDS)],
    )


def statistics(frame: pd.DataFrame, schema: DatasetSchema, accounts: pd.DataFrame | None) -> dict:
    """Observed per-feature statistics (the serving schema's reference for skew checks)."""
    stats: dict[str, dict] = {}
    for spec in schema.features:
        source = frame if spec.name in frame.columns else accounts
        if source is None or spec.name not in source.columns:
            continue
        col = source[spec.name]
        entry: dict = {
            "count": int(col.notna().sum()),
            "missing_rate": round(float(col.isna().mean()), 6),
        }
        if spec.dtype in ("category", "string", "bool"):
            freq = col.astype(str).value_counts(normalize=True).sort_index()
            entry["frequencies"] = {str(k): round(float(v), 6) for k, v in freq.items()}
        else:
            num = col.astype(float)
            entry.update(
                min=float(num.min()),
                max=float(num.max()),
                mean=float(num.mean()),
                std=float(num.std(ddof=0)),
            )
        stats[spec.name] = entry
    y = frame[schema.label]
    stats[schema.label] = {
        "positive_rate": float((y == schema.positive_label).mean()),
        "count": int(len(y)),
    }
    return stats
