"""``python -m kubeloop.operators.cluster`` refuses to start, saying why and without a
traceback, when there is no cluster to operate on or its settings are invalid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _start(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KUBERNETES_", "KUBECONFIG", "KUBELOOP_", "POD_"))
    }
    # no ~/.kube/config; the served namespaces set, as the chart always sets them
    base.update(HOME=str(tmp_path), PYTHONPATH=str(ROOT), KUBELOOP_OPERATOR_NAMESPACES='["ml"]')
    base.update(env)
    return subprocess.run(
        [sys.executable, "-m", "kubeloop.operators.cluster"],
        cwd=tmp_path,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_a_cluster_it_exits_saying_so(tmp_path) -> None:
    proc = _start(tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "kubeloop operator: no Kubernetes cluster to operate on: not in a pod" in proc.stderr
    assert "kubeconfig" in proc.stderr and "Traceback" not in proc.stderr


def test_no_namespaces_is_named_before_anything_starts(tmp_path) -> None:
    proc = _start(tmp_path, KUBELOOP_OPERATOR_NAMESPACES="")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "KUBELOOP_OPERATOR_NAMESPACES" in proc.stderr, proc.stderr


def test_a_broken_kubeconfig_is_named(tmp_path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n")
    proc = _start(tmp_path, KUBECONFIG=str(config))
    assert proc.returncode == 1, proc.stderr
    assert "no Kubernetes cluster to operate on" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_invalid_settings_are_named_before_the_cluster(tmp_path) -> None:
    proc = _start(tmp_path, KUBELOOP_OPERATOR_POLL_INTERVAL_SECONDS="soon")
    assert proc.returncode == 1, proc.stderr
    assert (
        "kubeloop operator: invalid operator settings: KUBELOOP_OPERATOR_POLL_INTERVAL_SECONDS"
        in proc.stderr
    )
    assert "Traceback" not in proc.stderr
