"""Statistical behaviour of the online detectors, with fixed seeds.

Data are made here in the main environment (the fraud generator with a small trained
model, and river's SEA concept-drift generator); the detectors run in the drift
environment through ``python -m kubeloop.monitoring.calibration`` (alibi-detect cannot
be imported here). Measured with ERT = 100 steps so each detector completes 100 runs.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from kubeloop.generated import REPO_ROOT
from kubeloop.monitoring.local import drift_python
from kubeloop.monitoring.scenarios import write_fraud_scenarios, write_river_scenario

pytestmark = pytest.mark.slow
ERT = 100
SETTINGS = {"ert": ERT, "mmd_bootstraps": 1000}


def calibrate(paths: dict, mode: str, detectors: str, stream: str, cache, **extra) -> dict:
    cmd = [str(drift_python()), "-m", "kubeloop.monitoring.calibration", "--mode", mode,
           "--reference", str(paths["reference"]), "--schema", str(paths["schema"]),
           "--stream", str(paths[stream]), "--null", str(paths["null"]), "--detectors", detectors,
           "--settings", json.dumps({**SETTINGS, **extra.pop("settings", {})}), "--cache-dir", str(cache)]  # fmt: skip
    cmd += [f"--{k}={v}" for k, v in extra.items()]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        json.dumps(result["detectors"], indent=1)
    )  # shown with -s: the numbers in docs/benchmarks.md
    return result["detectors"]


@pytest.fixture(scope="module")
def fraud(tmp_path_factory):
    return write_fraud_scenarios(tmp_path_factory.mktemp("fraud-scenarios"), seed=0)


@pytest.fixture(scope="module")
def river(tmp_path_factory):
    return write_river_scenario(tmp_path_factory.mktemp("river-sea"), seed=0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("drift-cache")


def test_stationary_run_length_matches_the_ert(fraud, river, cache):
    # 4 reference draws x 40 runs: the thresholds target the ERT averaged over reference samples.
    on_fraud = calibrate(fraud, "ert", "mmd,cvm,prediction", "null", cache, runs=160, repeats=4)
    on_river = calibrate(
        river, "ert", "cvm,prediction,error_rate", "null", cache, runs=160, repeats=4
    )
    # The goal is +-20% of the ERT. Measured (docs/benchmarks.md), the pooled ratios land in
    # 0.7-1.35: single reference draws of 300 (CVM) or 1000 (MMD) rows move the ERT by up to
    # +-40%, more than the run-to-run noise. The bound below catches a broken calibration
    # (a detector alarming at twice or half the configured rate); tightening it needs
    # larger reference samples per detector, which costs set-up time.
    for name, r in [*on_fraud.items(), *on_river.items()]:
        assert 0.6 <= r["ratio"] <= 1.5, (name, r)


def test_fet_run_length_matches_the_ert(fraud, cache):
    # FET on the 0/1 and one-hot columns; its thresholds need enough null streams that the
    # per-column quantile survives to the largest window (detectors._univariate_bootstraps).
    r = calibrate(fraud, "ert", "fet", "null", cache, runs=60)["fet"]
    assert 0.6 <= r["ratio"] <= 1.5, r


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("covariate", {"mmd", "cvm", "fet", "prediction"}),
        ("concept", {"error_rate"}),
        ("label_shift", {"prediction"}),
    ],
)
def test_injected_fraud_scenarios_are_detected(fraud, cache, scenario, expected):
    r = calibrate(fraud, "delay", "mmd,cvm,fet,prediction,error_rate", scenario, cache, warmup=100,
                  settings={"ert": 500, "mmd_every": 1, "univariate_every": 1})  # fmt: skip
    # "detected" means an alarm after the onset; an alarm in the 100-row warm-up is a false
    # alarm (expected for ~18% of detectors at ERT 500) and does not count as detection.
    detected = {name for name, d in r.items() if d["detected"]}
    assert expected <= detected, r


def test_river_sea_concept_drift_is_detected_by_the_error_rate(river, cache):
    r = calibrate(river, "delay", "cvm,prediction,error_rate", "sea_concept", cache, warmup=100,
                  settings={"ert": 500, "univariate_every": 1})  # fmt: skip
    # Far sooner than the ERT of 500: a real detection, not a chance alarm. Inputs and scores do
    # not change under a pure concept change, so cvm/prediction alarm only by chance (run length
    # around the ERT); their delays are printed, not asserted.
    assert r["error_rate"]["detected"] and r["error_rate"]["delay_events"] < 250, r
