"""Where training runs: the configured Ray cluster when it answers, else this pod's own
Ray (and why), and the checkpoint storage each needs. No Ray is started here."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from kubeloop.training.ray_runtime import RayRuntimeError, RayTarget, choose_address
from kubeloop.training.ray_train import RunStorage, TrainingResourceError

CLUSTER = "ray://kl-kubeloop-ray-head-svc.kubeloop.svc.cluster.local:10001"


@pytest.fixture
def listening() -> str:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"127.0.0.1:{server.getsockname()[1]}"


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # closed once the block ends


def test_a_reachable_cluster_is_joined(listening):
    assert choose_address(f"ray://{listening}") == (f"ray://{listening}", "")
    assert choose_address(listening) == (listening, "")


def test_no_address_or_an_unreachable_cluster_falls_back_and_says_why():
    assert choose_address(None) == (
        None,
        "KUBELOOP_RAY_ADDRESS names no Ray cluster",
    )
    closed = f"ray://{_closed_port()}"
    assert choose_address(closed) == (None, f"the Ray cluster at {closed} is not reachable")
    # A head Service that does not resolve: no KubeRay operator or no RayCluster.
    unresolved = "ray://kl-kubeloop-ray-head-svc.invalid:10001"
    assert choose_address(unresolved) == (
        None,
        f"the Ray cluster at {unresolved} is not reachable",
    )
    # What is checked is the head's host and port, without the scheme.
    seen = []
    choose_address(CLUSTER, reachable=lambda a: seen.append(a) or True)
    assert seen == ["kl-kubeloop-ray-head-svc.kubeloop.svc.cluster.local:10001"]


@pytest.mark.parametrize("bad", ["ray://head", "head", "ray://head:client"])
def test_a_malformed_address_is_refused_not_skipped(bad):
    with pytest.raises(RayRuntimeError, match="ray://host:port"):
        choose_address(bad, reachable=lambda a: True)


def test_the_target_describes_itself_for_the_log():
    assert RayTarget(CLUSTER, remote=True).describe() == f"training on the Ray cluster at {CLUSTER}"
    local = RayTarget("127.0.0.1:6379", remote=False, fallback=f"the Ray cluster at {CLUSTER} is not reachable")  # fmt: skip
    assert local.describe() == (
        f"training in this pod on its own Ray at 127.0.0.1:6379 "
        f"(the Ray cluster at {CLUSTER} is not reachable)"
    )


def test_local_runs_keep_checkpoints_in_a_folder(tmp_path):
    local = RayTarget("127.0.0.1:6379", remote=False)
    temporary = RunStorage.for_target(local)
    assert temporary.filesystem is None and temporary.owned
    temporary.cleanup("run")
    assert not Path(temporary.path).exists()
    given = RunStorage.for_target(local, tmp_path)
    assert given.path == str(tmp_path.resolve()) and not given.owned
    given.cleanup("run")
    assert tmp_path.exists()  # a caller's folder is the caller's


def test_cluster_runs_keep_checkpoints_in_the_registry_bucket(monkeypatch):
    from pyarrow import fs

    from kubeloop.settings import get_settings

    monkeypatch.setenv("KUBELOOP_REGISTRY_URI", "s3://ml-models/kubeloop/")
    monkeypatch.setenv("KUBELOOP_S3__ENDPOINT", "minio.kubeloop:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "access")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    get_settings.cache_clear()
    try:
        storage = RunStorage.for_target(RayTarget(CLUSTER, remote=True))
        assert storage.path == "ml-models/kubeloop/ray-train"
        assert isinstance(storage.filesystem, fs.S3FileSystem)
        # Ray pickles the filesystem to the workers: its settings travel with it.
        import pickle

        _, (options,) = pickle.loads(pickle.dumps(storage.filesystem)).__reduce__()
        assert (options["endpoint_override"], options["scheme"]) == ("minio.kubeloop:9000", "http")
        assert (options["access_key"], options["secret_key"]) == ("access", "secret")
        monkeypatch.setenv("KUBELOOP_REGISTRY_URI", "/var/registry")
        get_settings.cache_clear()
        with pytest.raises(TrainingResourceError, match="needs storage its nodes share"):
            RunStorage.for_target(RayTarget(CLUSTER, remote=True))
    finally:
        get_settings.cache_clear()
