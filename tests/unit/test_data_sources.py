"""Data sources: formats, schema resolution, coercion, and errors that name the problem."""

from __future__ import annotations

import json
import socket
import time

import pandas as pd
import pytest
import yaml

from kubeloop.data.fraud import FRAUD_SCHEMA, generate
from kubeloop.data.sources import (
    SourceError,
    data_hash,
    read_snapshot,
    read_source,
    resolve_schema,
    select_window,
    write_snapshot,
)
from kubeloop.settings import get_settings

SENSOR_SCHEMA = {
    "name": "sensors",
    "columns": [
        {"name": "reading_id", "dtype": "string", "role": "id"},
        {"name": "device_id", "dtype": "int", "role": "entity"},
        {"name": "ts", "dtype": "timestamp", "role": "timestamp"},
        {"name": "temperature", "dtype": "float", "min": -50, "max": 150},
        {"name": "mode", "dtype": "category", "categories": ["eco", "boost"]},
        {"name": "failed", "dtype": "int", "role": "label", "min": 0, "max": 1},
    ],
}


def _sensor_frame(n: int = 40) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "reading_id": [f"r{i}" for i in range(n)],
            "device_id": [i % 5 for i in range(n)],
            "ts": pd.date_range("2026-03-01", periods=n, freq="h").strftime("%Y-%m-%dT%H:%M:%S"),
            "temperature": [20.0 + i * 0.5 for i in range(n)],
            "mode": ["eco" if i % 3 else "boost" for i in range(n)],
            "failed": [int(i % 7 == 0) for i in range(n)],
        }
    )


@pytest.fixture
def sensor_csv(tmp_path):
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(SENSOR_SCHEMA))
    _sensor_frame().to_csv(tmp_path / "readings.csv", index=False)
    return tmp_path


def test_csv_with_yaml_schema_is_coerced_to_declared_dtypes(sensor_csv):
    data = read_source(str(sensor_csv / "readings.csv"), str(sensor_csv / "schema.yaml"))
    tx = data.transactions
    assert list(tx.columns) == ["reading_id", "device_id", "ts", "temperature", "mode", "failed"]
    assert str(tx["ts"].dtype) == "datetime64[us, UTC]"
    assert tx["device_id"].dtype == "int64" and tx["temperature"].dtype == "float64"
    assert data.account_features is None and data.schema.name == "sensors"


def test_schema_next_to_the_data_is_used_when_schema_uri_is_empty(sensor_csv):
    (sensor_csv / "schema.json").write_text(json.dumps(SENSOR_SCHEMA))
    assert read_source(str(sensor_csv / "readings.csv")).schema.name == "sensors"
    assert resolve_schema("", sensor_csv / "nowhere") is FRAUD_SCHEMA


def test_parquet_folder_and_snapshot_round_trip(tmp_path):
    generate("stationary", days=2, n_accounts=60, seed=2).write(tmp_path / "src")
    data = read_source(str(tmp_path / "src"))
    assert data.account_features is not None and data.scenario["scenario"] == "stationary"
    write_snapshot(data, tmp_path / "snap")
    again = read_snapshot(tmp_path / "snap")
    assert data_hash(again) == data_hash(data)
    pd.testing.assert_frame_equal(again.transactions, data.transactions)


def test_window_is_half_open(tmp_path):
    data = read_source("example://fraud/stationary?days=2&accounts=60&seed=2")
    ts = data.transactions["event_timestamp"]
    cut = ts.iloc[len(ts) // 2]
    before = select_window(data, "", cut.isoformat()).transactions
    after = select_window(data, cut.isoformat(), "").transactions
    assert len(before) + len(after) == len(ts)
    assert (after["event_timestamp"] >= cut).all() and (before["event_timestamp"] < cut).all()


@pytest.mark.parametrize(
    "uri, message",
    [
        ("example://fraud/tornado", "unknown scenario 'tornado'"),
        ("example://fraud/stationary?rows=5", "unknown parameters \\['rows'\\]"),
        ("ftp://host/data.csv", "unsupported source"),
        ("/does/not/exist.parquet", "does not exist"),
    ],
)
def test_bad_uris_are_named(uri, message):
    with pytest.raises(SourceError, match=message):
        read_source(uri)


def test_empty_file(tmp_path, sensor_csv):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SourceError, match="empty.csv is an empty file"):
        read_source(str(tmp_path / "empty.csv"), str(sensor_csv / "schema.yaml"))
    _sensor_frame().head(0).to_parquet(tmp_path / "none.parquet")
    with pytest.raises(SourceError, match="none.parquet holds no rows"):
        read_source(str(tmp_path / "none.parquet"), str(sensor_csv / "schema.yaml"))


def test_missing_columns(sensor_csv):
    _sensor_frame().drop(columns=["temperature", "mode"]).to_csv(
        sensor_csv / "bad.csv", index=False
    )
    with pytest.raises(SourceError, match=r"missing columns \['temperature', 'mode'\]"):
        read_source(str(sensor_csv / "bad.csv"), str(sensor_csv / "schema.yaml"))


@pytest.mark.parametrize(
    "column, value, message",
    [
        (
            "temperature",
            "hot",
            "'temperature' is declared float but holds non-numeric values, e.g. \\['hot'\\]",
        ),
        ("device_id", 2.5, "'device_id' is declared int but holds fractional values"),
        ("ts", "not-a-time", "'ts' is declared timestamp but holds \\['not-a-time'\\]"),
    ],
)
def test_wrong_dtypes(sensor_csv, column, value, message):
    frame = _sensor_frame().astype({column: object})
    frame.loc[3, column] = value
    frame.to_csv(sensor_csv / "bad.csv", index=False)
    with pytest.raises(SourceError, match=message):
        read_source(str(sensor_csv / "bad.csv"), str(sensor_csv / "schema.yaml"))


def _with_times(sensor_csv, times: list[str]) -> str:
    frame = _sensor_frame(len(times)).assign(ts=times)
    frame.to_csv(sensor_csv / "times.csv", index=False)
    return str(sensor_csv / "times.csv")


def test_mixed_timestamp_formats_in_one_column_are_refused(sensor_csv):
    # read value by value, 04/03/2024 would silently become April 3rd
    path = _with_times(sensor_csv, ["2024-03-04 10:00", "04/03/2024 11:00", "2024-03-04 12:00"])
    with pytest.raises(SourceError) as err:
        read_source(path, str(sensor_csv / "schema.yaml"))
    message = str(err.value)
    assert "column 'ts' mixes timestamp formats" in message
    assert "'2024-03-04 10:00'" in message and "'04/03/2024 11:00'" in message


def test_iso_8601_variants_are_one_format(sensor_csv):
    times = [
        "2024-03-04 10:00",
        "2024-03-04T10:30:00",
        "2024-03-04T11:00:00.250Z",
        "2024-03-04T13:00:00+02:00",
        "2024-03-04 11:30:00+00:00",
        "2024-03-05",
    ]
    ts = read_source(_with_times(sensor_csv, times), str(sensor_csv / "schema.yaml")).transactions[
        "ts"
    ]
    assert ts.dt.strftime("%m-%d %H:%M:%S.%f").tolist() == [
        "03-04 10:00:00.000000",
        "03-04 10:30:00.000000",
        "03-04 11:00:00.250000",
        "03-04 11:00:00.000000",
        "03-04 11:30:00.000000",
        "03-05 00:00:00.000000",
    ]


def test_one_non_iso_format_is_read_consistently(sensor_csv):
    ts = read_source(
        _with_times(sensor_csv, ["03/04/2024 10:00", "03/05/2024 10:00", "12/31/2024 9:15"]),
        str(sensor_csv / "schema.yaml"),
    ).transactions["ts"]
    assert ts.dt.strftime("%Y-%m-%d %H:%M").tolist() == [
        "2024-03-04 10:00",
        "2024-03-05 10:00",
        "2024-12-31 09:15",
    ]


def test_day_first_value_after_month_first_ones_is_named(sensor_csv):
    # same shape, but 25/03 cannot be month/day like the first value
    path = _with_times(sensor_csv, ["03/04/2024 10:00", "25/03/2024 10:00"])
    with pytest.raises(SourceError, match=r"do not follow the format of its first value .*25/03"):
        read_source(path, str(sensor_csv / "schema.yaml"))


def test_nan_only_column(sensor_csv):
    _sensor_frame().assign(temperature=float("nan")).to_parquet(sensor_csv / "bad.parquet")
    with pytest.raises(SourceError, match=r"columns \['temperature'\] hold only missing values"):
        read_source(str(sensor_csv / "bad.parquet"), str(sensor_csv / "schema.yaml"))


def test_feature_view_features_without_account_table(tmp_path):
    generate("stationary", days=1, n_accounts=20, seed=0).transactions.to_parquet(
        tmp_path / "tx.parquet"
    )
    with pytest.raises(SourceError, match="has no account_features.parquet and lacks columns"):
        read_source(str(tmp_path / "tx.parquet"))


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"name": "x", "columns": [', "is not valid json"),
        ('{"name": "x", "columns": []}', "invalid schema"),
        ("", "is an empty file"),
    ],
)
def test_malformed_schema_file(sensor_csv, text, message):
    (sensor_csv / "broken.json").write_text(text)
    with pytest.raises(SourceError, match=message):
        read_source(str(sensor_csv / "readings.csv"), str(sensor_csv / "broken.json"))


def test_missing_schema_file(sensor_csv):
    with pytest.raises(SourceError, match="schema file .*nope.yaml does not exist"):
        read_source(str(sensor_csv / "readings.csv"), str(sensor_csv / "nope.yaml"))


@pytest.fixture
def closed_port_endpoint(monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("KUBELOOP_S3__ENDPOINT", f"127.0.0.1:{port}")
    monkeypatch.setenv("KUBELOOP_S3__ACCESS_KEY", "kubeloop")
    monkeypatch.setenv("KUBELOOP_S3__SECRET_KEY", "kubeloop-secret")
    get_settings.cache_clear()
    yield f"127.0.0.1:{port}"
    get_settings.cache_clear()


@pytest.mark.parametrize("uri", ["s3://datasets/fraud/transactions.parquet", "s3://datasets/fraud"])
def test_unreachable_s3_is_named_quickly(closed_port_endpoint, uri):
    started = time.monotonic()
    with pytest.raises(
        SourceError, match=f"cannot read {uri} from S3 endpoint {closed_port_endpoint}"
    ):
        read_source(uri, timeout_s=1.0)
    assert time.monotonic() - started < 15


def test_unreachable_s3_schema(closed_port_endpoint, sensor_csv):
    with pytest.raises(SourceError, match="cannot read s3://schemas/sensors.yaml"):
        read_source(str(sensor_csv / "readings.csv"), "s3://schemas/sensors.yaml", timeout_s=1.0)
