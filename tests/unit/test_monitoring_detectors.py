"""spec.monitoring.detectors reaches the drift service: the watch carries the settings they
ask for, the service takes them, and a change of them watches the stable version again."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime, timedelta

import pytest
from kubeloop.operators.crd import DetectorName, ModelDeploymentStatus, Monitoring, parse_spec
from kubeloop.operators.reconciler.core import reconcile
from kubeloop.operators.reconciler.types import Observations, RegistryVersion, WatchDrift, iso

from kubeloop.drift.config import DetectorSettings, DriftConfigError

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def spec(detectors=None):
    monitoring = {} if detectors is None else {"detectors": detectors}
    return parse_spec({"model": {"name": "fraud-detector"}, "monitoring": monitoring})


def obs(t: float, watched=("v1",)) -> Observations:
    return Observations(
        now=T0 + timedelta(seconds=t),
        versions={},
        registry_versions=(RegistryVersion("v1", True),),
        ready_versions=frozenset({"v1"}),
        watched_versions=frozenset(watched),
        max_pass_gap_seconds=1e6,
    )


def watches(result) -> list[WatchDrift]:
    return [a for a in result.actions if isinstance(a, WatchDrift)]


def test_no_detectors_listed_means_the_service_own_settings():
    assert Monitoring().drift_settings() == {}
    first = reconcile("fd", spec(), None, obs(0, watched=()))
    assert watches(first) == [WatchDrift("v1")] and first.status.watched_detectors is None


def test_listed_families_are_on_with_their_erts_and_the_rest_off():
    settings = Monitoring.model_validate(
        {
            "detectors": [
                {"name": "cvm", "ert": 2000},
                {"name": "error_rate", "ert": 300},
                {"name": "predicted_class"},
            ]
        }
    ).drift_settings()
    assert settings == {
        "mmd": False, "cvm": True, "fet": False, "univariate": True, "prediction": False,
        "error_rate": True, "predicted_class": True, "cvm_ert": 2000, "error_rate_ert": 300,
    }  # fmt: skip


@pytest.mark.parametrize("name", list(DetectorName))
def test_the_drift_service_takes_every_setting_the_spec_can_ask_for(name):
    settings = Monitoring.model_validate({"detectors": [{"name": name, "ert": 777}]})
    taken = DetectorSettings().with_overrides(settings.drift_settings())
    assert taken.ert_of(name) == 777
    others = {d.value for d in DetectorName} - {name}
    assert not any(getattr(taken, other) for other in others)
    assert set(settings.drift_settings()) <= {f.name for f in fields(DetectorSettings)}


def test_a_family_without_its_own_ert_keeps_the_service_default():
    s = DetectorSettings(ert=1000, univariate_every=4)
    assert s.ert_of("mmd") == s.ert_of("cvm") == s.ert_of("error_rate") == 1000
    assert s.ert_of("predicted_class") == 4000  # it reads every prediction
    assert DetectorSettings(ert=1000, fet_ert=50).ert_of("fet") == 50
    with pytest.raises(DriftConfigError, match="mmd_ert"):
        DetectorSettings(mmd_ert=1)


def test_the_watch_carries_the_detectors_and_a_change_watches_the_stable_again():
    listed = [{"name": "mmd", "ert": 1000}, {"name": "error_rate"}]
    first = reconcile("fd", spec(listed), None, obs(0, watched=()))
    (watch,) = watches(first)
    assert watch.version == "v1" and dict(watch.detectors)["mmd_ert"] == 1000
    assert dict(watch.detectors)["cvm"] is False
    # The service watches v1 now: an unchanged spec asks nothing more.
    again = reconcile("fd", spec(listed), first.status, obs(5))
    assert watches(again) == []
    # kubectl apply with another ERT: v1 is watched again, once, with the new settings.
    changed = [{"name": "mmd", "ert": 5000}, {"name": "error_rate"}]
    rewatched = reconcile("fd", spec(changed), again.status, obs(10))
    (watch,) = watches(rewatched)
    assert watch.version == "v1" and dict(watch.detectors)["mmd_ert"] == 5000
    assert watches(reconcile("fd", spec(changed), rewatched.status, obs(15))) == []
    # Back to the service's own set: watched again without overrides.
    cleared = reconcile("fd", spec(), rewatched.status, obs(20))
    assert watches(cleared) == [WatchDrift("v1")] and cleared.status.watched_detectors is None


def test_a_status_from_before_the_field_does_not_rewatch_on_the_default():
    old = ModelDeploymentStatus(
        stable_version="v1", phase="Stable", promoted_at=iso(T0), observed_generation=1
    )
    assert watches(reconcile("fd", spec(), old, obs(100))) == []


def test_the_crd_names_the_detector_families_of_the_contract():
    from kubeloop.contracts.payload_events import DETECTORS

    assert {d.value for d in DetectorName} == set(DETECTORS)
