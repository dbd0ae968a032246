"""Importing Feast leaves prometheus-client in-process, here and in processes started later.

``import feast`` sets PROMETHEUS_MULTIPROC_DIR; a drift service started by a process that
had imported it counted an evicted version's labels again from a memory-mapped file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# A child of the importing process: a counter removed and created again starts at zero.
CHILD = """
from prometheus_client import CollectorRegistry, Counter
c = Counter("x", "x", ["v"], registry=CollectorRegistry())
c.labels(v="a").inc(5)
c.remove("a")
print(c.labels(v="a")._value.get())
"""

PARENT = f"""
import json, os, subprocess, sys
from kubeloop.features.feast_import import MULTIPROCESS_VARIABLES, load_feast
import prometheus_client.values as values
load_feast()
from feast import FeatureStore  # the package is there for the callers' own imports
child = subprocess.run([sys.executable, "-c", {CHILD!r}], capture_output=True, text=True, check=True)
print(json.dumps({{
    "env": {{k: os.environ.get(k) for k in MULTIPROCESS_VARIABLES}},
    "in_process": values.ValueClass is values.MutexValue,
    "child_value": float(child.stdout),
}}))
"""


def run(env: dict[str, str]) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}
    out = subprocess.run(
        [sys.executable, "-c", PARENT], env={**clean, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_feast_leaves_no_multiprocess_directory_behind():
    found = run({})
    assert found == {
        "env": {"PROMETHEUS_MULTIPROCESS_DIR": None, "PROMETHEUS_MULTIPROC_DIR": None},
        "in_process": True,
        "child_value": 0.0,
    }


def test_a_directory_the_user_set_is_kept(tmp_path):
    found = run({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert found["env"]["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path)
