"""Validate: run every data check on an ingested dataset, write the report and the
serving schema, pass the dataset through, and stop the pipeline when a check fails."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from kubeloop.components.validate.checks import (
    CheckResult,
    ValidationConfig,
    check_duplicates,
    check_feature_timing,
    check_label_timing,
    check_labels,
    check_leakage,
    check_missing,
    check_schema,
    statistics,
)
from kubeloop.components.validate.report import render_html

from kubeloop.data.fraud import SCHEMA_FILE
from kubeloop.data.sources import SNAPSHOT_TIMESTAMP, SourceData, read_snapshot


class DataValidationError(RuntimeError):
    """The dataset failed one or more checks; the message names them and the report."""


@dataclass
class ValidationOutcome:
    results: list[CheckResult]
    serving_schema: dict

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]


def with_view_features(data: SourceData) -> pd.DataFrame:
    """Transactions with each account's latest earlier snapshot joined as of event time
    (what the features stage will join), so feature-view features are checked for leakage too."""
    schema, tx, accounts = data.schema, data.transactions, data.account_features
    view = [c.name for c in schema.view_features if c.name not in tx.columns]
    if accounts is None or not view:
        return tx
    snaps = accounts[[schema.entity, SNAPSHOT_TIMESTAMP, *view]].rename(
        columns={SNAPSHOT_TIMESTAMP: "_snap"}
    )
    joined = pd.merge_asof(
        tx.sort_values(schema.timestamp),
        snaps.sort_values("_snap"),
        left_on=schema.timestamp,
        right_on="_snap",
        by=schema.entity,
        direction="backward",
    )
    return joined.drop(columns="_snap")


def run_checks(data: SourceData, cfg: ValidationConfig = ValidationConfig()) -> list[CheckResult]:
    frame, schema = data.transactions, data.schema
    results = check_schema(frame, schema)
    results += [check_missing(frame, schema, cfg), check_duplicates(frame, schema, cfg)]
    results += check_labels(frame, schema, cfg)
    results += [
        check_leakage(with_view_features(data), schema, cfg),
        check_label_timing(frame, schema),
    ]
    if data.account_features is not None:
        accounts = data.account_features
        view = [schema.entity, *(c.name for c in schema.view_features)]
        results += check_schema(accounts, schema, table="account_features", only=view)
        results.append(check_feature_timing(accounts, schema))
    return results


def serving_schema(data: SourceData) -> dict:
    """The train/serving schema: the declared ``DatasetSchema`` plus observed statistics."""
    body = data.schema.model_dump()
    body["statistics"] = statistics(data.transactions, data.schema, data.account_features)
    body["row_count"] = len(data.transactions)
    return body


def run_validate(
    dataset_dir: str | Path,
    validated_dir: str | Path,
    report_path: str | Path,
    serving_schema_dir: str | Path,
    cfg: ValidationConfig = ValidationConfig(),
) -> ValidationOutcome:
    """Checks ``dataset_dir``; always writes the HTML report, then raises
    :class:`DataValidationError` on failure or copies the dataset to ``validated_dir``
    and writes ``schema.json`` (with statistics) under ``serving_schema_dir``."""
    data = read_snapshot(dataset_dir)
    results = run_checks(data, cfg)
    outcome = ValidationOutcome(results=results, serving_schema={})
    report_path = Path(report_path)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "dataset": str(dataset_dir),
        "schema": data.schema.name,
        "rows": len(data.transactions),
    }
    report_path.write_text(
        render_html(results, title=f"Data validation: {data.schema.name}", summary=summary)
    )
    if outcome.failed:
        names = "; ".join(
            f"{r.name} [{', '.join(r.columns)}]: {r.details}"
            if r.columns
            else f"{r.name}: {r.details}"
            for r in outcome.failed
        )
        raise DataValidationError(f"data validation failed: {names} (report: {report_path})")
    outcome.serving_schema = serving_schema(data)
    shutil.copytree(dataset_dir, validated_dir, dirs_exist_ok=True)
    out = Path(serving_schema_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SCHEMA_FILE).write_text(json.dumps(outcome.serving_schema, indent=2, default=str))
    return outcome
