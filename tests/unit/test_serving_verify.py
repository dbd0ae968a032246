"""A downloaded version is checked against its manifest before the predictor serves it."""

from __future__ import annotations

import pytest

from kubeloop.registry import ChecksumMismatch, ModelRegistry
from kubeloop.serving.inputs import Limits
from kubeloop.serving.predictor import FraudPredictor, PredictorConfig, verify_folder
from kubeloop.testing import make_registry_version


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory):
    registry = ModelRegistry(str(tmp_path_factory.mktemp("registry")))
    make_registry_version(registry, "fraud-detector", seed=2, n_accounts=80, days=4, steps=50)
    _, folder = registry.download("fraud-detector", "v1", tmp_path_factory.mktemp("v1"))
    return registry, folder


def test_verified_folder_loads_and_reports_ready(downloaded):
    registry, folder = downloaded
    assert verify_folder(folder)["version"] == "v1"
    model = FraudPredictor(
        PredictorConfig(model_name="fraud-detector", model_dir=str(folder), limits=Limits())
    )
    assert not model.ready
    assert model.load() and model.ready and model.version == "v1"
    from_registry = FraudPredictor(
        PredictorConfig(model_name="fraud-detector", version="latest", registry_uri=registry.uri)
    )
    assert from_registry.load() and from_registry.version == "v1"


def test_tampered_file_is_refused(downloaded, tmp_path):
    import shutil

    _, folder = downloaded
    copy = shutil.copytree(folder, tmp_path / "copy")
    (copy / "preprocessing.json").write_text("{}")
    with pytest.raises(ChecksumMismatch, match="preprocessing.json"):
        verify_folder(copy)
    model = FraudPredictor(PredictorConfig(model_name="fraud-detector", model_dir=str(copy)))
    with pytest.raises(ChecksumMismatch):
        model.load()
    assert not model.ready


def test_folder_without_manifest_is_refused(tmp_path):
    with pytest.raises(ChecksumMismatch, match="MANIFEST"):
        verify_folder(tmp_path)
