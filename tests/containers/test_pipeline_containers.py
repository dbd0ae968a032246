"""The training pipeline with every stage in its own container (kfp.local's DockerRunner
on the stage images) registers the same version as the subprocess run: same data, same
parameters, same metrics and model bytes, in an S3 registry (moto's server on 127.0.0.1)
that the host and the containers both reach."""

from __future__ import annotations

import pytest

from kubeloop.images import STAGES, image
from kubeloop.local.pipelines import run_training_pipeline
from kubeloop.registry import ModelRegistry
from kubeloop.settings import get_settings
from tests.support.s3 import moto_s3

pytestmark = [
    pytest.mark.containers,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
SMALL = "example://fraud/stationary?days=6&accounts=300&seed=0"
BUCKET = "kubeloop-registry"
MODEL = "fraud-detector"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server with the registry bucket, reached through the settings."""
    with moto_s3(BUCKET) as server:
        yield server.env


@pytest.fixture
def home(tmp_path, monkeypatch, s3, engine):
    monkeypatch.setenv("KUBELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


def test_containerized_run_registers_what_the_subprocess_run_does(home, ray_head):
    by_subprocess = run_training_pipeline(
        source_uri=SMALL, epochs=2, registry_uri=f"s3://{BUCKET}/subprocess"
    )
    assert by_subprocess.succeeded, by_subprocess.error
    in_containers = run_training_pipeline(
        source_uri=SMALL, epochs=2, registry_uri=f"s3://{BUCKET}/containers", containers=True
    )
    assert in_containers.succeeded, in_containers.error
    assert {s.status for s in in_containers.stages} == {"SUCCESS"}
    # Every stage ran in its own image (kfp.local names the image it runs).
    log = in_containers.log_file.read_text()
    for stage in STAGES:
        assert f"Found image '{image(stage)}'" in log, stage
    assert in_containers.version == by_subprocess.version == "v1"

    sub = ModelRegistry(by_subprocess.registry_uri).get(MODEL, "v1")
    ctr = ModelRegistry(in_containers.registry_uri).get(MODEL, "v1")
    assert ctr.lineage["data_hash"] == sub.lineage["data_hash"]
    assert ctr.lineage["row_count"] == sub.lineage["row_count"]
    assert ctr.lineage["parameters"] == sub.lineage["parameters"]
    assert ctr.lineage["pipeline_run_id"] == in_containers.run_id != by_subprocess.run_id
    assert ctr.metrics == sub.metrics
    # Same torch build, same seed, same data: the same bytes, model weights included; only
    # the lineage differs (its run id).
    assert set(ctr.files) == set(sub.files)
    differing = {f for f in sub.files if ctr.files[f]["sha256"] != sub.files[f]["sha256"]}
    assert differing == {"lineage.json"}, differing
