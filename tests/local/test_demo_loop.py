"""A shortened ``kubeloop demo`` end to end, with every process real.

Real: Debian's Prometheus, the drift service in its own venv, the router, predictor
processes per version, the operator's local driver as its own process, retraining runs
as its subprocesses; traffic at a steady rate with delayed labels posted as feedback.
Shortened: v1 is trained with plain torch (the pipeline has its own tests), the drift
starts 15 s into the traffic, and the run stops once the worse candidate is judged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kubeloop.loop.config import LoopConfig
from kubeloop.loop.demo import run_demo

pytestmark = pytest.mark.slow

SHORT = {
    "v1_trainer": "quick",
    "rate": 40.0,
    "onset_seconds": 15.0,
    "v1_accounts": 300,
    "stream_accounts": 300,
    "min_samples": 30,
    "min_step_seconds": 5,
    "steps": (50, 100),
}


def nothing_left_running(home: Path) -> None:
    procs = home / "runtime" / "procs"
    assert not list(procs.glob("*.json")), [p.name for p in procs.glob("*.json")]
    for entry in Path("/proc").iterdir():  # no child still names the run's folder
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            assert str(home) not in cmdline, f"still running: {cmdline}"


def test_covariate_drift_retrains_promotes_and_rolls_back_the_worse_candidate(tmp_path):
    config = LoopConfig(scenario="covariate", duration_seconds=200.0, **SHORT)
    lines: list[str] = []
    summary = run_demo(
        config, home=tmp_path / "demo", report_dir=tmp_path / "report", echo=lines.append,
        max_seconds=230,
    )  # fmt: skip
    nothing_left_running(tmp_path / "demo")
    log = "\n".join(lines)
    assert summary["drift_onset_seconds"] == pytest.approx(15.0, abs=1.0), log
    assert (
        summary["detection_delay_seconds"] is not None and summary["detection_delay_seconds"] > 0
    ), log
    assert summary["retrained_version"] == "v2", log
    assert summary["update_cycle_seconds"] > summary["version_registered_seconds"] > 0, log
    assert summary["accuracy_before_drift"]["predictions"] > 200
    assert (
        summary["accuracy_during_drift"]["accuracy"] < summary["accuracy_before_drift"]["accuracy"]
    )
    assert summary["accuracy_after_promotion"]["predictions"] > 0
    bad = summary["bad_candidate"]
    assert bad and bad["version"] == "v3" and bad["rolled_back"], log
    assert bad["failed_checks"], bad
    assert 0 < bad["predictions_served"] < summary["traffic"]["predictions"] / 2
    assert summary["traffic"]["server_errors"] / summary["traffic"]["requests"] < 0.02
    report = tmp_path / "report"
    assert json.loads((report / "summary.json").read_text()) == summary
    page = (report / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "rolled back (v3)" in page


@pytest.mark.skipif(os.environ.get("KUBELOOP_SKIP_STATIONARY_DEMO") == "1", reason="opted out")
def test_stationary_traffic_retrains_nothing(tmp_path):
    config = LoopConfig(scenario="stationary", duration_seconds=120.0, settle_seconds=35.0,
                        **{**SHORT, "onset_seconds": 10.0})  # fmt: skip
    summary = run_demo(config, home=tmp_path / "demo", report_dir=tmp_path / "report",
                       echo=lambda _: None, max_seconds=150)  # fmt: skip
    nothing_left_running(tmp_path / "demo")
    assert summary["traffic"]["predictions"] > 1500
    assert summary["retraining_runs"] == 0 and summary["rollbacks"] == 0
    assert summary["update_cycle_seconds"] is None and summary["bad_candidate"] is None
    assert summary["accuracy_before_drift"]["accuracy"] > 0.9
