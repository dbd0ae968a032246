"""Label shift, action Recalibrate: the stable version published again for the new prior."""

from __future__ import annotations

import numpy as np
import pytest
from kubeloop.operators.loop import SharedActuators, dispatch
from kubeloop.operators.reconciler.types import Recalibrate

from kubeloop.drift.reference import load_reference
from kubeloop.model import ModelBundle
from kubeloop.registry import ModelRegistry
from kubeloop.registry.recalibration import publish_recalibrated, recalibrated_threshold
from kubeloop.training.quick import publish_quick_version

MODEL = "fraud-detector"


@pytest.mark.parametrize(
    ("threshold", "reference", "target"),
    [(0.5, 0.04, 0.12), (0.3, 0.2, 0.05), (0.7, 0.5, 0.5), (0.5, 0.01, 0.6)],
)
def test_the_new_threshold_decides_as_the_prior_adjusted_scores(threshold, reference, target):
    scores = np.linspace(0.0005, 0.9995, 1999)
    odds = target * (1 - reference) / (reference * (1 - target))
    adjusted = odds * scores / (odds * scores + 1 - scores)
    moved = recalibrated_threshold(threshold, reference, target)
    clear = np.abs(scores - moved) > 1e-9  # the boundary itself is rounding
    assert ((adjusted >= threshold) == (scores >= moved))[clear].all()
    assert (moved < threshold) == (target > reference) or target == reference


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, float("nan")])
def test_a_prior_outside_zero_one_is_refused(bad):
    with pytest.raises(ValueError, match="prior"):
        recalibrated_threshold(0.5, 0.04, bad)


def test_a_recalibrated_version_serves_the_same_scores_and_decides_for_the_new_prior(tmp_path):
    registry = ModelRegistry(str(tmp_path / "registry"))
    publish_quick_version(registry, MODEL, seed=1)
    source = registry.get(MODEL, "v1")
    actuators = SharedActuators(MODEL, registry, drift=None)
    action = Recalibrate("v1", "fd-v1-recalibrate", reference_prior=0.04, target_prior=0.12)
    dispatch(action, actuators)
    dispatch(action, actuators)  # replayed: published once
    versions = registry.list_versions(MODEL)
    assert [v.version for v in versions] == ["v1", "v2"]
    new = versions[1]
    assert new.lineage["recalibrated_from"] == "v1" and new.lineage["recalibration"] == action.name
    assert (new.lineage["reference_prior"], new.lineage["target_prior"]) == (0.04, 0.12)
    assert new.gate_passed == source.gate_passed and "recalibration" in new.gate

    old = ModelBundle.load(registry.download(MODEL, "v1", tmp_path / "v1")[1])
    bundle = ModelBundle.load(registry.download(MODEL, "v2", tmp_path / "v2")[1])
    moved = recalibrated_threshold(old.config.threshold, 0.04, 0.12)
    assert bundle.config.threshold == pytest.approx(moved) and moved < old.config.threshold
    reference = load_reference(registry.uri, MODEL, "v1")
    rows = reference.frame[bundle.preprocessor.input_columns]
    old_scores, _ = old.predict(rows)
    scores, classes = bundle.predict(rows)
    np.testing.assert_allclose(scores, old_scores)  # the same model
    assert (classes == (scores >= moved)).all()

    # The drift service's reference for v2: the same rows at the new prior, predicted at the
    # new threshold, so its detectors compare live traffic with the world v2 is for.
    shifted = load_reference(registry.uri, MODEL, "v2")
    assert shifted.labels.mean() == pytest.approx(0.12, abs=0.01)
    assert reference.labels.mean() < 0.08
    assert (shifted.predictions == (shifted.scores >= moved)).all()
    assert shifted.digest != reference.digest


def test_a_version_recalibrated_again_starts_from_its_own_threshold(tmp_path):
    registry = ModelRegistry(str(tmp_path / "registry"))
    publish_quick_version(registry, MODEL, seed=1)
    first = publish_recalibrated(
        registry, MODEL, "v1", name="a", reference_prior=0.04, target_prior=0.1
    )
    second = publish_recalibrated(registry, MODEL, first.version, name="b",
                                  reference_prior=0.1, target_prior=0.04)  # fmt: skip
    back = second.lineage["threshold"]["to"]
    assert back == pytest.approx(first.lineage["threshold"]["from"])  # the odds compose
