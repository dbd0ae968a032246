"""Ingest from S3: a real S3 endpoint (moto's threaded server) on 127.0.0.1, read with minio."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
import yaml
from kubeloop.components.ingest.impl import run_ingest

from kubeloop.data.fraud import generate
from kubeloop.data.sources import SourceError, read_source
from kubeloop.settings import get_settings
from tests.support.s3 import moto_s3

pytestmark = pytest.mark.slow
EXAMPLE = "example://fraud/stationary?days=2&accounts=80&seed=12"

SENSOR_SCHEMA = {
    "name": "sensors",
    "columns": [
        {"name": "device_id", "dtype": "int", "role": "entity"},
        {"name": "ts", "dtype": "timestamp", "role": "timestamp"},
        {"name": "temperature", "dtype": "float"},
        {"name": "failed", "dtype": "int", "role": "label"},
    ],
}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with moto_s3("datasets") as server:
        client = server.client
        folder = generate("stationary", days=2, n_accounts=80, seed=12).write(
            tmp_path_factory.mktemp("src")
        )
        for path in Path(folder).iterdir():
            client.fput_object("datasets", f"fraud/stationary/{path.name}", str(path))
        frame = pd.DataFrame(
            {
                "device_id": [1, 2, 3, 1],
                "ts": [
                    "2026-03-01T00:00:00Z",
                    "2026-03-01T01:00:00Z",
                    "2026-03-01T02:00:00Z",
                    "2026-03-01T03:00:00Z",
                ],
                "temperature": [20.5, 21.0, 80.0, 19.5],
                "failed": [0, 0, 1, 0],
            }
        )
        csv = frame.to_csv(index=False).encode()
        schema = yaml.safe_dump(SENSOR_SCHEMA).encode()
        client.put_object("datasets", "sensors/readings.csv", io.BytesIO(csv), len(csv))
        client.put_object("datasets", "schemas/sensors.yaml", io.BytesIO(schema), len(schema))
        yield server


@pytest.fixture
def s3_settings(s3, monkeypatch):
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield s3.endpoint
    get_settings.cache_clear()


def test_s3_folder_is_the_same_data_version_as_its_local_origin(s3_settings, tmp_path):
    from_s3 = run_ingest("s3://datasets/fraud/stationary", "", "", "", tmp_path / "a", timeout_s=5)
    from_example = run_ingest(EXAMPLE, "", "", "", tmp_path / "b")
    assert (
        from_s3.data_hash == from_example.data_hash and from_s3.row_count == from_example.row_count
    )
    assert (tmp_path / "a" / "account_features.parquet").exists()


def test_s3_object_with_schema_on_s3(s3_settings):
    data = read_source(
        "s3://datasets/sensors/readings.csv", "s3://datasets/schemas/sensors.yaml", timeout_s=5
    )
    assert data.schema.name == "sensors" and len(data.transactions) == 4
    assert str(data.transactions["ts"].dtype) == "datetime64[us, UTC]"


def test_s3_object_without_schema_defaults_to_fraud_and_names_missing_columns(s3_settings):
    with pytest.raises(
        SourceError, match="missing columns .* declared by schema 'card_transactions'"
    ):
        read_source("s3://datasets/sensors/readings.csv", timeout_s=5)


@pytest.mark.parametrize(
    "uri, message",
    [
        ("s3://datasets/nothing/here.parquet", "cannot read s3://datasets/nothing/here.parquet"),
        ("s3://datasets/empty-prefix", "no objects under this prefix"),
        ("s3://no-such-bucket/x.csv", "cannot read s3://no-such-bucket/x.csv"),
    ],
)
def test_missing_s3_locations_are_named(s3_settings, uri, message):
    with pytest.raises(SourceError, match=message):
        read_source(uri, timeout_s=5)
