"""Bad input stops the whole training pipeline at ingest or validate, with the problem
named in the run's error and log, and the model registry is never touched."""

from __future__ import annotations

import socket

import pytest

from kubeloop.data.fraud import generate
from kubeloop.settings import get_settings

pytestmark = pytest.mark.slow


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bad_inputs(root):
    """name → (source_uri, schema_uri, stage that must stop the run, message in its log)."""
    good = generate("stationary", days=2, n_accounts=80, seed=1)
    cases = {}
    (root / "empty.csv").write_text("")
    cases["empty file"] = (str(root / "empty.csv"), "", "ingest", "is an empty file")
    folder = good.write(root / "missing")
    good.transactions.drop(columns=["amount"]).to_parquet(folder / "transactions.parquet")
    cases["missing column"] = (str(folder), "", "ingest", "missing columns ['amount']")
    folder = good.write(root / "dtype")
    good.transactions.assign(hour="noon").to_parquet(folder / "transactions.parquet")
    cases["wrong dtype"] = (
        str(folder),
        "",
        "ingest",
        "'hour' is declared int but holds non-numeric",
    )
    folder = good.write(root / "nan")
    good.transactions.assign(distance_from_home_km=float("nan")).to_parquet(
        folder / "transactions.parquet"
    )
    cases["NaN-only column"] = (
        str(folder),
        "",
        "ingest",
        "['distance_from_home_km'] hold only missing values",
    )
    folder = good.write(root / "mixed-times")
    tx = good.transactions.assign(
        event_timestamp=good.transactions["event_timestamp"].dt.strftime("%Y-%m-%d %H:%M")
    )
    tx.loc[1, "event_timestamp"] = "04/03/2024 11:00"
    tx.to_parquet(folder / "transactions.parquet")
    cases["mixed timestamp formats"] = (
        str(folder),
        "",
        "ingest",
        "column 'event_timestamp' mixes timestamp formats",
    )
    (root / "schemas").mkdir()  # not next to any source: it would be picked up as theirs
    (root / "schemas" / "broken.json").write_text('{"name": "broken", "columns": [')
    cases["malformed schema"] = (
        str(good.write(root / "ok")),
        str(root / "schemas" / "broken.json"),
        "ingest",
        "is not valid json",
    )
    cases["unreachable s3"] = (
        "s3://datasets/fraud",
        "",
        "ingest",
        "cannot read s3://datasets/fraud from S3 endpoint",
    )
    folder = good.write(root / "range")
    tx = good.transactions.copy()
    tx.loc[3, "hour"] = 31
    tx.to_parquet(folder / "transactions.parquet")
    cases["out of range"] = (
        str(folder),
        "",
        "validate",
        "data validation failed: schema (transactions) [hour]",
    )
    return cases


CASES = [
    "empty file",
    "missing column",
    "wrong dtype",
    "NaN-only column",
    "mixed timestamp formats",
    "malformed schema",
    "unreachable s3",
    "out of range",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_stops_the_pipeline_before_the_registry(case, tmp_path, monkeypatch):
    from kubeloop.local.pipelines import run_training_pipeline

    monkeypatch.setenv("KUBELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KUBELOOP_S3__ENDPOINT", f"127.0.0.1:{_closed_port()}")
    get_settings.cache_clear()
    source, schema, stage, message = _bad_inputs(tmp_path)[case]
    try:
        result = run_training_pipeline(source_uri=source, schema_uri=schema, echo=lambda _: None)
    finally:
        get_settings.cache_clear()
    assert not result.succeeded
    assert result.failed_stage == stage
    # the stage's own message, read from its output, is the run's error
    assert message in result.error
    assert message in result.log_file.read_text()
    registry = tmp_path / "home" / "registry"
    assert not registry.exists() or not any(registry.rglob("*")), "nothing may reach the registry"
    assert not {"features", "train", "evaluate", "gate", "register"} & {
        s.name for s in result.stages
    }
