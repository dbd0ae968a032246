"""Training through Ray Client, the way the train stage joins the chart's RayCluster: a
Ray head on this machine with its client server, Ray Train's checkpoints in the
registry's S3 bucket (moto's S3 server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeloop.data.fraud import FRAUD_SCHEMA
from kubeloop.local.ports import free_port
from kubeloop.settings import get_settings
from kubeloop.training import TrainParams, train_model
from kubeloop.training.ray_runtime import RayTarget, start_local_head, stop_local_head
from kubeloop.training.ray_train import RUN_STORAGE_PREFIX
from tests.support.s3 import moto_s3
from tests.support.training import split_frames

BUCKET = "kubeloop-registry"
PREFIX = "models"

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]


@pytest.fixture
def ray_client_head(tmp_path: Path) -> Iterator[str]:
    """A Ray head (loopback only) serving Ray Client on its own port, as KubeRay's head
    serves 10001; stopped afterwards (only its own process group)."""
    client = free_port()
    start_local_head(tmp_path, ray_client_port=client)
    try:
        yield f"ray://127.0.0.1:{client}"
    finally:
        import ray

        ray.shutdown()
        stop_local_head(tmp_path)


@pytest.fixture
def s3_registry(monkeypatch) -> Iterator[object]:
    with moto_s3(BUCKET) as server:
        monkeypatch.setenv("KUBELOOP_REGISTRY_URI", f"s3://{BUCKET}/{PREFIX}")
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
        yield server.client


def test_training_through_ray_client_keeps_checkpoints_in_the_registry_bucket(
    ray_client_head, s3_registry, monkeypatch
):
    import ray

    ray.shutdown()  # this process may have joined another Ray before
    monkeypatch.setenv("KUBELOOP_RAY_ADDRESS", ray_client_head)
    get_settings.cache_clear()
    lines: list[str] = []
    try:
        train, _ = split_frames(days=3, n_accounts=150)
        outcome = train_model(train, FRAUD_SCHEMA, TrainParams(epochs=2, seed=1), log=lines.append)
    finally:
        get_settings.cache_clear()
    assert outcome.ray == RayTarget(address=ray_client_head, remote=True, fallback="")
    assert f"[train] training on the Ray cluster at {ray_client_head}" in lines
    assert outcome.metrics["ray_cluster"] == 1.0
    # The best epoch's checkpoint came back from the bucket (the only storage the run had).
    assert [row["epoch"] for row in outcome.history] == [1, 2]
    assert outcome.metrics["best_epoch"] in (1, 2) and 0.0 < outcome.bundle.config.threshold < 1.0
    # ... and the run's checkpoints were removed with it (pyarrow leaves the empty
    # "directory" marker of ray-train/ itself).
    prefix = f"{PREFIX}/{RUN_STORAGE_PREFIX}/"
    left = [o.object_name for o in s3_registry.list_objects(BUCKET, prefix=prefix, recursive=True)]
    assert left in ([], [prefix]), left
