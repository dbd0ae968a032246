"""A local pipeline run finds its own folder when other runs share the runs folder: the
demo's worse candidate and a retraining run of the operator can overlap."""

from __future__ import annotations

import time
from datetime import datetime

from kfp.local.executor_input_utils import get_local_pipeline_resource_name
from kubeloop.pipelines.training import PIPELINE_NAME

from kubeloop.local.pipelines import own_run_dir


def _call():
    """What a run records as it is called: the time."""
    at = datetime.now()
    time.sleep(0.002)
    return at


def _start(runs):
    """The run's folder, named as kfp.local names it when a run starts now."""
    folder = runs / get_local_pipeline_resource_name(PIPELINE_NAME)
    folder.mkdir()
    time.sleep(0.002)
    return folder


def test_overlapping_runs_each_take_their_own_folder(tmp_path):
    _start(tmp_path)  # a run that ended before the others
    earlier = tmp_path / get_local_pipeline_resource_name(PIPELINE_NAME)  # named first,
    time.sleep(0.002)
    ours_called = _call()
    ours = _start(tmp_path)
    later_called = _call()
    later = _start(tmp_path)  # started while ours ran
    earlier.mkdir()  # its folder appears only now
    (tmp_path / f"{later.name}.log").write_text("")  # logs are files, not runs
    assert own_run_dir(tmp_path, ours_called) == ours
    assert own_run_dir(tmp_path, later_called) == later


def test_no_folder_when_the_run_never_started_one(tmp_path):
    _start(tmp_path)
    assert own_run_dir(tmp_path, _call()) is None
