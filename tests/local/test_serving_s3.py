"""The predictor and the drift service load a registry version from S3 (moto's S3 server
on 127.0.0.1).

The version is published through kubeloop's S3 store, the predictor runs as a real
subprocess with the endpoint and credentials from ``KUBELOOP_S3__*`` settings, and a
tampered object must stop it from loading (checksum error, never ready).
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from kubeloop.local.drift import start_drift_service
from kubeloop.local.ports import free_port
from kubeloop.local.servers import start_predictor
from kubeloop.local.supervisor import Supervisor
from kubeloop.local.wait import wait_until
from kubeloop.model import ModelBundle
from kubeloop.registry import ChecksumMismatch, ModelRegistry, RegistryError
from kubeloop.serving.predictor import FraudPredictor, PredictorConfig, parse_version_uri
from kubeloop.settings import get_settings
from kubeloop.training.quick import publish_quick_version
from tests.support.fixtures import SAMPLE_TRANSACTION
from tests.support.s3 import moto_s3

pytestmark = pytest.mark.slow
MODEL = "fraud-detector"
BUCKET = "kubeloop-registry"
REGISTRY = f"s3://{BUCKET}/models"
ROW = SAMPLE_TRANSACTION


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server with the registry bucket; the settings that reach it."""
    with moto_s3(BUCKET) as server, pytest.MonkeyPatch.context() as mp:
        for key, value in server.env.items():
            mp.setenv(key, value)
        get_settings.cache_clear()
        yield server.env
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def registry(s3_env) -> ModelRegistry:
    reg = ModelRegistry(REGISTRY)
    publish_quick_version(reg, MODEL, seed=4, n_accounts=80, days=4, steps=80)
    return reg


@pytest.fixture(scope="module")
def bundle(registry, tmp_path_factory) -> ModelBundle:
    _, folder = registry.download(MODEL, "v1", tmp_path_factory.mktemp("v1"))
    return ModelBundle.load(folder)


def _tampered_version(registry: ModelRegistry, tmp_path) -> str:
    """Publishes a copy of v1, then changes bytes of its model.pt in the bucket."""
    _, folder = registry.download(MODEL, "v1", tmp_path / "src")
    (folder / "MANIFEST.json").unlink()
    version = registry.publish(MODEL, folder).version
    key = f"models/{MODEL}/versions/{version}/model.pt"
    store = registry.store
    data = bytearray(store.client.get_object(BUCKET, key).read())
    data[len(data) // 2] ^= 0xFF
    store.client.put_object(BUCKET, key, io.BytesIO(bytes(data)), len(data))
    return version


def test_predictor_subprocess_serves_a_version_from_s3(registry, bundle, s3_env, tmp_path):
    with Supervisor(tmp_path) as sup:
        server = start_predictor(sup, MODEL, "v1", REGISTRY, env=s3_env)
        resp = httpx.post(
            f"{server.url}/v1/models/{MODEL}:predict", json={"instances": [ROW]}, timeout=10
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["model_version"] == "v1" and resp.headers["x-kubeloop-version"] == "v1"
        scores, classes = bundle.predict(pd.DataFrame([ROW]))
        np.testing.assert_allclose(body["predictions"][0]["score"], scores[0], rtol=1e-6)
        assert body["predictions"][0]["label"] == classes[0]
        assert httpx.get(f"{server.url}/v2/models/{MODEL}/ready").status_code == 200


def test_storage_uri_of_a_version_loads_in_process(registry):
    uri = f"{REGISTRY}/{MODEL}/versions/v1"
    assert parse_version_uri(uri) == (REGISTRY, MODEL, "v1")
    model = FraudPredictor(PredictorConfig(model_name="fraud", model_dir=uri))
    assert model.load() and model.ready and model.version == "v1"
    with pytest.raises(RegistryError, match="not a registry version URI"):
        parse_version_uri(f"{REGISTRY}/{MODEL}/v1")


def test_tampered_object_fails_load_with_a_checksum_error(registry, s3_env, tmp_path):
    version = _tampered_version(registry, tmp_path)
    model = FraudPredictor(
        PredictorConfig(model_name=MODEL, version=version, registry_uri=REGISTRY)
    )
    with pytest.raises(ChecksumMismatch, match=rf"{version}/model.pt: sha256 does not match"):
        model.load()
    assert not model.ready
    assert model._cache is None  # the partial download is removed

    with Supervisor(tmp_path / "runtime") as sup:
        server = start_predictor(sup, MODEL, version, REGISTRY, env=s3_env, wait=False)
        wait_until(lambda: not server.running(), timeout=60, what="the predictor to exit")
        assert server.exit_status() == 1
        log = server.log_tail()
        assert "cannot load the model" in log and "sha256 does not match" in log, log
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{server.url}/v2/health/ready", timeout=2)


def test_missing_version_and_unreachable_endpoint_are_named(registry, s3_env, monkeypatch):
    model = FraudPredictor(PredictorConfig(model_name=MODEL, version="v99", registry_uri=REGISTRY))
    with pytest.raises(RegistryError, match="no version 'v99'"):
        model.load()
    monkeypatch.setenv("KUBELOOP_S3__ENDPOINT", f"127.0.0.1:{free_port()}")
    get_settings.cache_clear()
    try:
        model = FraudPredictor(PredictorConfig(model_name=MODEL, registry_uri=REGISTRY))
        with pytest.raises(RegistryError, match=BUCKET):
            model.load()
        assert not model.ready
    finally:
        monkeypatch.setenv("KUBELOOP_S3__ENDPOINT", s3_env["KUBELOOP_S3__ENDPOINT"])
        get_settings.cache_clear()


def test_reload_replaces_the_downloaded_copy(registry):
    model = FraudPredictor(PredictorConfig(model_name=MODEL, version="v1", registry_uri=REGISTRY))
    model.load()
    first = Path(model._cache.name)
    assert (first / "MANIFEST.json").exists()
    model.load()
    assert not first.exists() and Path(model._cache.name).exists()


def test_drift_service_watches_a_version_from_s3(registry, s3_env, tmp_path):
    """Its own environment reads the same ``KUBELOOP_S3__*`` settings (no pydantic 2 there)."""
    with Supervisor(tmp_path / "runtime") as sup:
        drift = start_drift_service(
            sup, REGISTRY, env=s3_env, detectors={"mmd": "false", "univariate": "false"}
        )
        watched = httpx.post(
            f"{drift.url}/v1/watch",
            params={"wait": "armed", "timeout": "120"},
            json={"model": MODEL, "version": "v1"},
            timeout=150,
        )
        assert watched.status_code == 200, watched.text
        assert watched.json()["state"] == "armed"
        missing = httpx.post(f"{drift.url}/v1/watch", json={"model": MODEL, "version": "v9"})
        assert missing.status_code == 404, missing.text
