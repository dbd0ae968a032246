"""A downloaded version is checked against its manifest before the predictor serves it."""

from __future__ import annotations

import pytest

from kubeloop.registry import ChecksumMismatch, ModelRegistry
from kubeloop.serving.inputs import Limits
from kubeloop.serving.predictor import FraudPredictor, PredictorConfig, verify_folder
from kubeloop.training.quick import publish_quick_version


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory):
    registry = ModelRegistry(str(tmp_path_factory.mktemp("registry")))
    publish_quick_version(registry, "fraud-detector", seed=2, n_accounts=80, days=4, steps=50)
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


def test_numpy_forward_pass_equals_the_bundle_on_dataframes(downloaded):
    """Forward builds the same float32 matrix as Preprocessor.transform, bit for bit."""
    import numpy as np
    import pandas as pd

    from kubeloop.data import fraud
    from kubeloop.features.join import point_in_time_join
    from kubeloop.model import ModelBundle
    from kubeloop.serving.forward import Forward

    _, folder = downloaded
    bundle = ModelBundle.load(folder)
    forward = Forward(bundle)
    frame = point_in_time_join(fraud.generate("stationary", days=2, n_accounts=150, seed=9)).head(
        300
    )
    rows = frame[bundle.preprocessor.input_columns].to_dict("records")
    rows[0]["merchant_category"] = "casino"  # unknown category: all zeros, as in training
    rows[1]["amount"] = None  # missing numeric: NaN in both
    expected = bundle.preprocessor.transform(pd.DataFrame(rows))
    np.testing.assert_array_equal(forward.matrix(rows), expected)
    assert forward.matrix(rows).dtype == np.float32
    scores, classes = forward.predict(rows[2:])
    want_scores, want_classes = bundle.predict(pd.DataFrame(rows[2:]))
    np.testing.assert_array_equal(scores, want_scores)
    np.testing.assert_array_equal(classes, want_classes)
    assert 0 < classes.sum() < len(classes) or len(set(scores.round(3))) > 10
