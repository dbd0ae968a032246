"""kubeloop's built images, run: their posture (non-root, no compilers, the operator
without torch or Ray), the predictor serving a registry version, the drift service taking
a payload event, the operator refusing to start without a cluster."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pandas as pd
import pytest
from docker.types import Mount

from kubeloop.images import IMAGES, STAGES, image
from kubeloop.local.ports import free_port
from kubeloop.local.wait import wait_until
from kubeloop.registry import ModelRegistry
from kubeloop.training.quick import publish_quick_version
from tests.support.events import payload_pair
from tests.support.fixtures import SAMPLE_TRANSACTION

pytestmark = [pytest.mark.containers, pytest.mark.slow]
MODEL = "fraud-detector"
# Small detectors so that arming takes seconds (as in tests/local/test_drift_service.py).
FAST_DETECTORS = {
    "ert": 100, "univariate_windows": [10, 30], "error_windows": [10, 30],
    "mmd_reference_rows": 200, "mmd_bootstraps": 200, "mmd_every": 1, "univariate_every": 1,
    "univariate_bootstraps": 300, "cvm_reference_rows": 100,
}  # fmt: skip
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "ld", "make")
PROBE = """
import importlib.util, json, os, shutil, sys
print(json.dumps({
    "uid": os.getuid(),
    "python": list(sys.version_info[:2]),
    "compilers": [c for c in sys.argv[1:] if shutil.which(c)],
    "modules": {m: importlib.util.find_spec(m) is not None
                for m in ("kubeloop", "torch", "ray", "kopf", "alibi_detect", "feast")},
    "pip": importlib.util.find_spec("pip") is not None,
}))
"""


def run_once(docker_client, ref: str, **kwargs) -> str:
    out = docker_client.containers.run(ref, remove=True, stdout=True, stderr=True, **kwargs)
    return out.decode()


def by_image(docker_client, names) -> dict[str, list[str]]:
    """Image id -> the names tagged with it (the bare stage names share one image)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(docker_client.images.get(image(name)).id, []).append(name)
    return groups


@pytest.fixture(scope="module")
def probes(docker_client) -> dict[str, dict]:
    """The probe's findings per name, run once per distinct image."""
    found = {}
    for names in by_image(docker_client, IMAGES).values():
        out = run_once(docker_client, image(names[0]),
                       entrypoint=["python", "-c", PROBE, *COMPILERS])  # fmt: skip
        found.update(dict.fromkeys(names, json.loads(out.strip().splitlines()[-1])))
    return found


@pytest.mark.parametrize("name", IMAGES)
def test_image_posture(probes, name: str) -> None:
    probe = probes[name]
    assert probe["uid"] != 0, f"{name} runs as root"
    assert probe["compilers"] == [], f"{name} carries {probe['compilers']}"
    assert probe["python"] == [3, 11]
    assert probe["modules"]["kubeloop"]
    if name == "operator":
        assert probe["modules"]["kopf"]
        assert not probe["modules"]["torch"] and not probe["modules"]["ray"], probe
    elif name == "drift":
        assert probe["modules"]["alibi_detect"] and probe["modules"]["torch"]
        assert not probe["modules"]["feast"]
    else:
        assert probe["modules"]["torch"] and probe["modules"]["ray"] and probe["modules"]["feast"]


def test_stage_images_run_the_cli(docker_client) -> None:
    """Without KFP's command, a stage image runs kubeloop's CLI (its entrypoint)."""
    for names in by_image(docker_client, STAGES).values():
        out = run_once(docker_client, image(names[0]), command=["pipeline", "--help"])
        assert "Compile and run kubeloop's KFP pipelines" in out, (names, out[-500:])


@contextmanager
def serving(docker_client, ref: str, url: str, command: list[str], **kwargs) -> Iterator[str]:
    """A detached container on the host network, until ``url`` answers 200."""
    container = docker_client.containers.run(
        ref,
        command=command,
        detach=True,
        network_mode="host",
        name=f"kubeloop-{uuid.uuid4().hex[:8]}",
        **kwargs,
    )

    def up() -> bool:
        container.reload()
        if container.status == "exited":
            raise RuntimeError(f"{ref} exited:\n{container.logs().decode()[-3000:]}")
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=180, interval=0.5, what=f"{ref} on {url}",
                   detail=lambda: container.logs().decode()[-3000:])  # fmt: skip
        yield container
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> ModelRegistry:
    root = tmp_path_factory.mktemp("registry")
    root.chmod(0o755)
    reg = ModelRegistry(str(root))
    publish_quick_version(reg, MODEL, seed=3, n_accounts=200, days=7)
    return reg


def test_predictor_serves_a_version_from_a_mounted_registry(docker_client, registry) -> None:
    http, grpc = free_port(), free_port()
    mount = Mount(target="/mnt/registry", source=str(registry.uri), type="bind", read_only=True)
    command = ["--model_name", MODEL, "--version", "v1", "--registry-uri", "/mnt/registry",
               "--http_port", str(http), "--grpc_port", str(grpc)]  # fmt: skip
    base = f"http://127.0.0.1:{http}"
    with serving(
        docker_client, image("predictor"), f"{base}/v2/health/ready", command, mounts=[mount]
    ):
        ready = httpx.get(f"{base}/v2/models/{MODEL}/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        r = httpx.post(
            f"{base}/v1/models/{MODEL}:predict",
            json={"instances": [SAMPLE_TRANSACTION]},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        (prediction,) = r.json()["predictions"]
        assert 0.0 <= prediction["score"] <= 1.0 and prediction["label"] in (0, 1)


def test_drift_service_answers_health_and_takes_a_payload_event(docker_client, registry) -> None:
    port = free_port()
    mount = Mount(target="/mnt/registry", source=str(registry.uri), type="bind", read_only=True)
    base = f"http://127.0.0.1:{port}"
    # The entrypoint's --port is overridden by the later one: argparse keeps the last.
    command = ["--port", str(port), "--registry-uri", "/mnt/registry"]
    with serving(docker_client, image("drift"), f"{base}/healthz", command, mounts=[mount]):
        assert httpx.get(f"{base}/healthz", timeout=10).json() == {"ok": True}
        watch = httpx.post(
            f"{base}/v1/watch",
            params={"wait": "armed", "timeout": "120"},
            json={"model": MODEL, "version": "v1", "detectors": FAST_DETECTORS, "reset": True},
            timeout=150,
        )
        assert watch.status_code == 200 and watch.json()["state"] == "armed", watch.text
        reference = pd.read_parquet(f"{registry.uri}/{MODEL}/versions/v1/reference.parquet")
        row = reference.iloc[0]
        features = {k: (row[k].item() if hasattr(row[k], "item") else row[k]) for k in reference.columns
                    if k not in ("is_fraud", "prediction_score", "prediction")}  # fmt: skip
        _, events = payload_pair([features], [float(row["prediction_score"])],
                                 [int(row["prediction"])], MODEL, "v1")  # fmt: skip
        for headers, body in events:
            r = httpx.post(f"{base}/", headers=headers, content=body, timeout=30)
            assert r.status_code == 202, r.text
        status = httpx.get(f"{base}/v1/status", params={"wait": "idle"}, timeout=60).json()
        (watched,) = [w for w in status["watched"] if w["version"] == "v1"]
        assert watched["samples"] == 1, watched


def test_operator_without_a_cluster_exits_saying_so(docker_client) -> None:
    # Its namespaces set (the chart always sets them), so the missing cluster is what stops it.
    container = docker_client.containers.run(
        image("operator"), detach=True, network_mode="none",
        environment={"KUBELOOP_OPERATOR_NAMESPACES": '["ml"]'},
    )  # fmt: skip
    try:
        code = container.wait(timeout=120)["StatusCode"]
        logs = container.logs().decode()
    finally:
        container.remove(force=True)
    assert code == 1, logs
    assert "kubeloop operator: no Kubernetes cluster to operate on" in logs, logs
    assert "Traceback" not in logs, logs
