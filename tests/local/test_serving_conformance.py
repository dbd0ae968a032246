"""Open Inference Protocol conformance with a third-party client: Triton's ``tritonclient``.

The predictor must answer what a stock V2 client sends: server and model metadata,
readiness, inference with JSON and with binary tensors (the binary tensor extension),
batches of 1 and 64, on the versioned routes too, over REST and gRPC. tritonclient's
gRPC stubs and kserve's register the same ``inference.*`` protobuf names, so the gRPC
client runs in a subprocess that never imports kserve.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from kubeloop.local.servers import start_predictor
from kubeloop.local.supervisor import Supervisor
from kubeloop.model import ModelBundle
from kubeloop.registry import ModelRegistry
from kubeloop.training.quick import publish_quick_version
from tests.support.fixtures import SAMPLE_TRANSACTION

httpclient = pytest.importorskip("tritonclient.http")

pytestmark = pytest.mark.slow
MODEL = "fraud-detector"
ROW = SAMPLE_TRANSACTION
INT_FEATURES = {"hour", "is_foreign", "txn_count_1h"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> ModelRegistry:
    reg = ModelRegistry(str(tmp_path_factory.mktemp("registry")))
    publish_quick_version(reg, MODEL, seed=5)
    return reg


@pytest.fixture(scope="module")
def predictor(registry, tmp_path_factory):
    with Supervisor(tmp_path_factory.mktemp("runtime")) as sup:
        yield start_predictor(sup, MODEL, "v1", registry.uri)


@pytest.fixture(scope="module")
def bundle(registry, tmp_path_factory) -> ModelBundle:
    _, folder = registry.download(MODEL, "v1", tmp_path_factory.mktemp("v1"))
    return ModelBundle.load(folder)


def _rows(n: int) -> list[dict]:
    return [{**ROW, "amount": 10.0 + 7.5 * i, "hour": i % 24} for i in range(n)]


def _inputs(rows: list[dict], binary: bool) -> list:
    inputs = []
    for name in ROW:
        values = [r[name] for r in rows]
        if name == "merchant_category":
            array, datatype = np.array(values, dtype=np.object_), "BYTES"
        elif name in INT_FEATURES:
            array, datatype = np.array(values, dtype=np.int64), "INT64"
        else:
            array, datatype = np.array(values, dtype=np.float64), "FP64"
        tensor = httpclient.InferInput(name, [len(rows)], datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def test_rest_metadata_and_readiness(predictor):
    client = httpclient.InferenceServerClient(predictor.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "v1")
        assert not client.is_model_ready(MODEL, "v9")
        assert client.get_server_metadata()["name"]
        meta = client.get_model_metadata(MODEL)
        assert meta["name"] == MODEL
        assert set(ROW) <= {i["name"] for i in meta["inputs"]}
        assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {
            "score": "FP64",
            "label": "INT64",
        }
        assert client.get_model_metadata(MODEL, "v1")["name"] == MODEL
    finally:
        client.close()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("n", [1, 64])
@pytest.mark.parametrize("version", ["", "v1"], ids=["unversioned", "versioned"])
def test_rest_infer_matches_the_bundle(predictor, bundle, binary, n, version):
    rows = _rows(n)
    client = httpclient.InferenceServerClient(predictor.url.removeprefix("http://"))
    try:
        outputs = [
            httpclient.InferRequestedOutput(name, binary_data=binary) for name in ("score", "label")
        ]
        result = client.infer(
            MODEL, _inputs(rows, binary), model_version=version, outputs=outputs,
            request_id=f"triton-{n}-{int(binary)}",
        )  # fmt: skip
    finally:
        client.close()
    scores, classes = bundle.predict(pd.DataFrame(rows))
    np.testing.assert_allclose(result.as_numpy("score"), scores, rtol=1e-6)
    assert result.as_numpy("label").tolist() == classes.tolist()
    response = result.get_response()
    assert response["model_name"] == MODEL and response["id"] == f"triton-{n}-{int(binary)}"


def test_rest_other_version_is_an_error_naming_it(predictor):
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(predictor.url.removeprefix("http://"))
    try:
        with pytest.raises(InferenceServerException) as err:
            client.infer(MODEL, _inputs(_rows(1), False), model_version="v9")
    finally:
        client.close()
    assert "v9" in str(err.value)


_GRPC_CLIENT = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient

url, model, rows, ints = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), set(sys.argv[4:])
client = grpcclient.InferenceServerClient(url)
out = {"live": client.is_server_live(), "ready": client.is_model_ready(model)}
meta = client.get_model_metadata(model, as_json=True)
out["inputs"] = [i["name"] for i in meta["inputs"]]
out["outputs"] = {o["name"]: o["datatype"] for o in meta["outputs"]}
out["versions"] = meta.get("versions", [])
inputs = []
for name in rows[0]:
    values = [r[name] for r in rows]
    if isinstance(values[0], str):
        array, datatype = np.array(values, dtype=np.object_), "BYTES"
    elif name in ints:
        array, datatype = np.array(values, dtype=np.int64), "INT64"
    else:
        array, datatype = np.array(values, dtype=np.float64), "FP64"
    tensor = grpcclient.InferInput(name, [len(rows)], datatype)
    tensor.set_data_from_numpy(array)
    inputs.append(tensor)
result = client.infer(model, inputs)
out["score"] = result.as_numpy("score").tolist()
out["label"] = result.as_numpy("label").tolist()
print(json.dumps(out))
"""


@pytest.mark.parametrize("n", [1, 64])
def test_grpc_metadata_and_infer(predictor, bundle, n):
    rows = _rows(n)
    grpc_url = f"127.0.0.1:{predictor.ports['grpc']}"
    proc = subprocess.run(
        [sys.executable, "-c", _GRPC_CLIENT, grpc_url, MODEL, json.dumps(rows), *INT_FEATURES],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["live"] and out["ready"] and out["versions"] == ["v1"]
    assert set(ROW) <= set(out["inputs"])
    assert out["outputs"] == {"score": "FP64", "label": "INT64"}
    scores, classes = bundle.predict(pd.DataFrame(rows))
    np.testing.assert_allclose(out["score"], scores, rtol=1e-6)
    assert out["label"] == classes.tolist()
