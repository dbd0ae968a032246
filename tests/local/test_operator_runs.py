"""The local run submitter with real subprocesses: idempotent by name, failures reported."""

from __future__ import annotations

import time

from kubeloop.operators.reconciler.types import SubmitRun

from kubeloop.local.operator.actuators import LocalRunSubmitter
from kubeloop.local.supervisor import Supervisor


def wait_terminal(submitter, name, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obs = submitter.status(name)
        if obs.state in ("Succeeded", "Failed"):
            return obs
        time.sleep(0.3)
    raise AssertionError(f"{name} did not finish")


def test_failed_run_reports_its_error_and_resubmission_is_a_no_op(tmp_path):
    sup = Supervisor(tmp_path / "runtime")
    submitter = LocalRunSubmitter(
        sup,
        tmp_path / "runs",
        str(tmp_path / "registry"),
        "kubeloop.local.operator.runjob:quick_train",
    )
    run = SubmitRun(
        "fd-v1-retrain-1",
        "kubeloop-training",
        None,
        "kubeloop",
        {"model_name": "fd", "quality": "ugly"},
    )
    assert submitter.status(run.run_name).state == "NotFound"
    try:
        submitter.submit(run)
        pid = sup.get(f"run-{run.run_name}").pid
        submitter.submit(run)  # same name: nothing new starts
        assert sup.get(f"run-{run.run_name}").pid == pid
        obs = wait_terminal(submitter, run.run_name)
        assert obs.state == "Failed" and "quality must be good or bad" in obs.message
        submitter.submit(run)  # even after it ended, the name is taken
        assert submitter.status(run.run_name).state == "Failed"
    finally:
        sup.stop_all()


def test_runner_that_dies_without_a_result_is_failed(tmp_path):
    sup = Supervisor(tmp_path / "runtime")
    submitter = LocalRunSubmitter(sup, tmp_path / "runs", str(tmp_path / "registry"), "os:abort")
    run = SubmitRun("fd-v1-retrain-2", "p", None, "e", {})
    try:
        submitter.submit(run)
        obs = wait_terminal(submitter, run.run_name, 60)
        assert obs.state == "Failed" and "without a result" in obs.message
    finally:
        sup.stop_all()


def test_spec_pipeline_naming_a_module_function_is_the_runner(tmp_path):
    sup = Supervisor(tmp_path / "runtime")
    submitter = LocalRunSubmitter(sup, tmp_path / "runs", str(tmp_path / "registry"), "os:abort")
    assert submitter.runner_for(SubmitRun("r", "kubeloop-training", None, "e", {})) == "os:abort"
    run = SubmitRun(
        "fd-v1-retrain-3",
        "kubeloop.local.operator.runjob:quick_train",
        None,
        "e",
        {"model_name": "fd", "quality": "ugly"},
    )
    try:
        submitter.submit(run)
        obs = wait_terminal(submitter, run.run_name)
        # quick_train ran (not the default os:abort) and refused the parameter by name.
        assert obs.state == "Failed" and "quality must be good or bad" in obs.message
    finally:
        sup.stop_all()
