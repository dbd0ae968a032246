"""The predictor as a real subprocess: V1/V2 REST and gRPC clients, errors, events, metrics, fuzz."""

from __future__ import annotations

import asyncio
import math
import statistics
import time

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

from kubeloop.local.ports import free_port
from kubeloop.local.servers import start_predictor
from kubeloop.local.supervisor import Supervisor
from kubeloop.local.wait import wait_until
from kubeloop.model import ModelBundle
from kubeloop.registry import ModelRegistry
from kubeloop.training.quick import publish_quick_version
from tests.support.fixtures import SAMPLE_TRANSACTION
from tests.support.sink import EventSink

pytestmark = pytest.mark.slow
MODEL = "fraud-detector"
ROW = SAMPLE_TRANSACTION
V2_TYPES = {
    "merchant_category": "BYTES",
    "hour": "INT64",
    "is_foreign": "INT64",
    "txn_count_1h": "INT64",
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> ModelRegistry:
    reg = ModelRegistry(str(tmp_path_factory.mktemp("registry")))
    publish_quick_version(reg, MODEL, seed=3)
    return reg


@pytest.fixture(scope="module")
def sink():
    with EventSink() as s:
        yield s


@pytest.fixture(scope="module")
def predictor(registry, sink, tmp_path_factory):
    with Supervisor(tmp_path_factory.mktemp("runtime")) as sup:
        yield start_predictor(
            sup,
            MODEL,
            "v1",
            registry.uri,
            logger_url=sink.url,
            extra=["--max-batch", "64", "--max-payload-bytes", "65536", "--body-timeout", "2"],
        )


@pytest.fixture(scope="module")
def bundle(registry, tmp_path_factory) -> ModelBundle:
    _, folder = registry.download(MODEL, "v1", tmp_path_factory.mktemp("v1"))
    return ModelBundle.load(folder)


def _predict(url: str, body, **kw) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/{MODEL}:predict", json=body, timeout=10, **kw)


def _metric(url: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_v1_plain_http_matches_the_bundle(predictor, bundle):
    rows = [
        ROW,
        {**ROW, "amount": 12.0, "merchant_category": "grocery", "hour": 13, "is_foreign": 0},
    ]
    resp = _predict(predictor.url, {"instances": rows}, headers={"x-request-id": "req-v1"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-request-id"] == "req-v1"
    body = resp.json()
    assert body["model_version"] == "v1"
    scores, classes = bundle.predict(pd.DataFrame(rows))
    assert [p["label"] for p in body["predictions"]] == classes.tolist()
    np.testing.assert_allclose([p["score"] for p in body["predictions"]], scores, rtol=1e-6)
    assert (
        body["predictions"][0]["score"] > body["predictions"][1]["score"]
    )  # riskier row scores higher


def _v2_request(rows: list[dict], request_id: str = "req-v2") -> InferRequest:
    inputs = []
    for name in ROW:
        values = [r[name] for r in rows]
        tensor = InferInput(name, [len(rows)], V2_TYPES.get(name, "FP64"))
        tensor.set_data_from_numpy(
            np.array(values, dtype=object if name == "merchant_category" else None), False
        )
        inputs.append(tensor)
    return InferRequest(model_name=MODEL, infer_inputs=inputs, request_id=request_id)


def test_v2_rest_with_kserve_client(predictor, bundle):
    async def call():
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        try:
            return await client.infer(predictor.url, _v2_request([ROW, ROW]), model_name=MODEL)
        finally:
            await client._client.aclose()

    result = asyncio.run(call())
    outputs = {o.name: o.as_numpy() for o in result.outputs}
    expected, _ = bundle.predict(pd.DataFrame([ROW]))
    np.testing.assert_allclose(outputs["score"], [expected[0]] * 2, rtol=1e-6)
    assert result.parameters["model_version"] == "v1"


def test_grpc_with_kserve_client(predictor, bundle):
    async def call():
        client = InferenceGRPCClient(f"127.0.0.1:{predictor.ports['grpc']}", retries=0, timeout=10)
        try:
            return await client.infer(_v2_request([ROW], "req-grpc"))
        finally:
            await client.close()

    result = asyncio.run(call())
    outputs = {o.name: o.as_numpy() for o in result.outputs}
    expected, classes = bundle.predict(pd.DataFrame([ROW]))
    np.testing.assert_allclose(outputs["score"], expected, rtol=1e-6)
    assert outputs["label"].tolist() == classes.tolist()


def test_grpc_bad_input_is_invalid_argument(predictor):
    import grpc

    async def call():
        client = InferenceGRPCClient(f"127.0.0.1:{predictor.ports['grpc']}", retries=0, timeout=10)
        bad = InferRequest(
            model_name=MODEL, infer_inputs=[InferInput("colour", [1], "FP64", [1.0])]
        )
        try:
            return await client.infer(bad)
        finally:
            await client.close()

    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(call())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "colour" in err.value.details()


def test_v2_body_id_becomes_the_request_id_and_must_be_printable(predictor, sink):
    inputs = [
        {"name": k, "shape": [1], "datatype": V2_TYPES.get(k, "FP64"), "data": [v]}
        for k, v in ROW.items()
    ]
    url = f"{predictor.url}/v2/models/{MODEL}/infer"
    resp = httpx.post(url, json={"id": "v2-id-1", "inputs": inputs}, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == "v2-id-1" and resp.headers["x-request-id"] == "v2-id-1"
    resp = httpx.post(url, json={"id": "a\r\nCe-Type: x", "inputs": inputs}, timeout=10)
    assert resp.status_code == 400 and "printable" in resp.json()["error"]
    wait_until(lambda: len(sink.by_id("v2-id-1")) >= 2, timeout=10, interval=0.05,
               what="both events of v2-id-1")  # fmt: skip
    assert len(sink.by_id("v2-id-1")) == 2


def test_v2_metadata_and_health(predictor):
    meta = httpx.get(f"{predictor.url}/v2/models/{MODEL}").json()
    names = {i["name"] for i in meta["inputs"]}
    assert set(ROW) | {"account_id"} <= names
    assert {o["name"] for o in meta["outputs"]} == {"score", "label"}
    assert httpx.get(f"{predictor.url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{predictor.url}/v2/models/{MODEL}/ready").status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"instances": [{**ROW, "amount": "lots"}]}, 400, "amount"),
        ({"instances": [{**ROW, "colour": 1}]}, 400, "colour"),
        ({"instances": [{**ROW, "hour": 99}]}, 400, "hour"),
        ({"instances": [ROW] * 65}, 400, "limit of 64"),
        ({"rows": [ROW]}, 400, "rows"),
    ],
)
def test_client_mistakes_get_4xx_naming_the_problem(predictor, body, status, needle):
    resp = _predict(predictor.url, body)
    assert resp.status_code == status, resp.text
    assert needle in resp.json()["error"]


def test_malformed_json_oversized_payload_and_unknown_model(predictor):
    resp = httpx.post(
        f"{predictor.url}/v1/models/{MODEL}:predict",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 400 and "error" in resp.json()
    resp = httpx.post(f"{predictor.url}/v1/models/{MODEL}:predict", content=b"x" * 70_000)
    assert resp.status_code == 413 and "65536" in resp.json()["error"]
    resp = httpx.post(
        f"{predictor.url}/v1/models/{MODEL}:predict", content=iter([b"y" * 40_000] * 2)
    )
    assert resp.status_code == 413
    assert (
        httpx.post(
            f"{predictor.url}/v1/models/other:predict", json={"instances": [ROW]}
        ).status_code
        == 404
    )
    import json

    for raw in (
        json.dumps({"instances": [{**ROW, "amount": math.inf}]}),
        '{"instances": [{"amount": 1e999}]}',
    ):
        resp = httpx.post(
            f"{predictor.url}/v1/models/{MODEL}:predict",
            content=raw,
            headers={"content-type": "application/json"},
        )
        assert resp.status_code == 400 and "error" in resp.json(), resp.text
    assert _metric(predictor.url, "kubeloop_request_errors_total", reason="payload_too_large") >= 2


V1_PATH = f"/v1/models/{MODEL}:predict"
V2_PATH = f"/v2/models/{MODEL}/infer"


def _v2_inputs(row: dict = ROW, **changes) -> list[dict]:
    tensors = {
        k: {"name": k, "shape": [1], "datatype": V2_TYPES.get(k, "FP64"), "data": [v]}
        for k, v in row.items()
    }
    for name, tensor in changes.items():
        tensors[name] = {"name": name, "shape": [1], **tensor}
    return list(tensors.values())


def test_grpc_and_rest_model_metadata(predictor):
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    with grpc.insecure_channel(f"127.0.0.1:{predictor.ports['grpc']}") as channel:
        meta = GRPCInferenceServiceStub(channel).ModelMetadata(
            pb.ModelMetadataRequest(name=MODEL), timeout=10
        )
    assert {o.name for o in meta.outputs} == {"score", "label"}
    assert set(ROW) <= {i.name for i in meta.inputs} and list(meta.versions) == ["v1"]
    rest = httpx.get(f"{predictor.url}/v2/models/{MODEL}", timeout=10)
    assert rest.status_code == 200 and {o["name"] for o in rest.json()["outputs"]} == {
        "score",
        "label",
    }


def test_v2_json_without_content_type_is_json(predictor):
    body = orjson.dumps({"inputs": _v2_inputs()})
    resp = httpx.post(predictor.url + V2_PATH, content=body, timeout=10)
    assert "content-type" not in resp.request.headers
    assert resp.status_code == 200, resp.text
    assert {o["name"] for o in resp.json()["outputs"]} == {"score", "label"}


def test_version_routes_answer_for_the_served_version_only(predictor):
    base = f"{predictor.url}/v2/models/{MODEL}/versions"
    plain = httpx.post(predictor.url + V2_PATH, json={"inputs": _v2_inputs()}, timeout=10)
    versioned = httpx.post(f"{base}/v1/infer", json={"inputs": _v2_inputs()}, timeout=10)
    assert versioned.status_code == 200, versioned.text
    assert versioned.json()["outputs"] == plain.json()["outputs"]
    assert httpx.get(f"{base}/v1/ready", timeout=10).status_code == 200
    assert httpx.get(f"{base}/v1", timeout=10).json()["name"] == MODEL
    for resp in (
        httpx.post(f"{base}/v7/infer", json={"inputs": _v2_inputs()}, timeout=10),
        httpx.get(f"{base}/v7/ready", timeout=10),
        httpx.get(f"{base}/v7", timeout=10),
    ):
        assert resp.status_code == 404 and "'v7'" in resp.json()["error"], resp.text


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ({"inputs": _v2_inputs(), "instances": []}, ["instances"]),
        ({"inputs": [{**_v2_inputs()[0], "colour": 1}, *_v2_inputs()[1:]]}, ["colour"]),
        ({"inputs": _v2_inputs(amount={"datatype": "INT64", "data": [12.5]})},
         ["amount", "INT64", "12.5"]),
        ({"inputs": _v2_inputs({**ROW, "account_id": 0},
                               account_id={"datatype": "INT64", "data": [2**70]})},
         ["account_id", "INT64"]),
        ({"inputs": None}, ["inputs"]),
    ],
)  # fmt: skip
def test_v2_unknown_keys_and_bad_integers_are_400(predictor, body, needles):
    import json  # orjson cannot write 2**70

    resp = httpx.post(predictor.url + V2_PATH, content=json.dumps(body), timeout=10,
                      headers={"content-type": "application/json"})  # fmt: skip
    assert resp.status_code == 400, resp.text
    for needle in needles:
        assert needle in resp.json()["error"]


def test_bad_inference_header_is_400_and_keeps_the_connection(predictor):
    with httpx.Client(timeout=10) as client:
        resp = client.post(predictor.url + V2_PATH, content=b"{}",
                           headers={"inference-header-content-length": "abc"})  # fmt: skip
        assert resp.status_code == 400, resp.text
        assert "Inference-Header-Content-Length" in resp.json()["error"]
        assert resp.headers.get("connection") != "close"
        assert (
            client.post(predictor.url + V2_PATH, json={"inputs": _v2_inputs()}).status_code == 200
        )


def test_unknown_routes_and_methods_answer_the_error_contract(predictor):
    missing = httpx.get(predictor.url + "/v3/nowhere", timeout=10)
    assert missing.status_code == 404 and set(missing.json()) == {"error"}, missing.text
    wrong = httpx.delete(predictor.url + V2_PATH, timeout=10)
    assert wrong.status_code == 405 and set(wrong.json()) == {"error"}, wrong.text
    assert "POST" in wrong.headers["allow"]


def test_every_error_outcome_is_counted(predictor):
    before = _metric(predictor.url, "kubeloop_inference_requests_total", status="client_error")
    json_type = {"content-type": "application/json"}
    sends = [
        (V1_PATH, b"{not json", json_type, 400),  # kserve's own decode error
        (V2_PATH, b'{"inputs": [', json_type, 400),  # was FastAPI's 422
        (V2_PATH, b'{"inputs": [{"name": "amount", "shape": "x", "datatype": 1}]}', json_type, 400),
        (V2_PATH, orjson.dumps({"inputs": None}), json_type, 400),
        (V1_PATH, b"\xef\xbb\xbf" + orjson.dumps({"instances": [ROW]}), json_type, 400),
        (V2_PATH, b"\xef\xbb\xbf" + orjson.dumps({"inputs": _v2_inputs()}), json_type, 400),
        (V1_PATH, orjson.dumps({"instances": [ROW]}), {"content-type": "text/plain"}, 415),
        (V1_PATH, b"x" * 70_000, json_type, 413),
        (f"/v2/models/{MODEL}/versions/v7/infer", b"{}", json_type, 404),
    ]
    for path, content, headers, status in sends:
        resp = httpx.post(predictor.url + path, content=content, headers=headers, timeout=10)
        assert resp.status_code == status, (path, resp.text)
        assert "error" in resp.json() and "detail" not in resp.json()
    after = _metric(predictor.url, "kubeloop_inference_requests_total", status="client_error")
    assert after - before == len(sends)
    for reason in (
        "malformed_body",
        "unsupported_media_type",
        "payload_too_large",
        "unknown_model",
    ):
        assert _metric(predictor.url, "kubeloop_request_errors_total", reason=reason) >= 1


def test_request_id_is_capped(predictor):
    ok = _predict(predictor.url, {"instances": [ROW]}, headers={"x-request-id": "r" * 128})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "r" * 128
    resp = _predict(predictor.url, {"instances": [ROW]}, headers={"x-request-id": "r" * 100_000})
    assert resp.status_code == 400 and "X-Request-Id" in resp.json()["error"]
    assert "x-request-id" not in resp.headers


def test_stalled_body_gets_408_and_the_connection_closes(predictor):
    import socket

    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", predictor.ports["http"]), timeout=15) as sock:
        sock.sendall(
            f"POST {V1_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            'Content-Length: 500\r\n\r\n{"inst'.encode()
        )
        answer = b""
        while chunk := sock.recv(65536):  # the server closes the connection after its answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"connection: close" in answer.lower() and b"2 s" in answer
    assert time.monotonic() - start < 10


def test_large_batch_keeps_health_probes_answering(registry, tmp_path):
    """100k rows under a raised --max-batch (the body limit follows it); probes still answer."""
    import concurrent.futures

    with Supervisor(tmp_path) as sup:
        big = start_predictor(sup, MODEL, "v1", registry.uri, extra=["--max-batch", "100000"])
        body = orjson.dumps({"instances": [ROW] * 100_000})
        assert len(body) > 1_048_576  # over the old fixed limit
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            batch = pool.submit(
                httpx.post, big.url + V1_PATH, content=body, timeout=120,
                headers={"content-type": "application/json"},
            )  # fmt: skip
            probes = []
            while not batch.done():
                start = time.perf_counter()
                assert httpx.get(f"{big.url}/v2/health/live", timeout=10).status_code == 200
                probes.append(time.perf_counter() - start)
                time.sleep(0.05)
            resp = batch.result()
        assert resp.status_code == 200, resp.text[:300]
        assert len(resp.json()["predictions"]) == 100_000
        assert len(probes) >= 3 and max(probes) < 2.0, probes


def test_payload_events_in_kserve_format(predictor, sink):
    resp = _predict(predictor.url, {"instances": [ROW]}, headers={"x-request-id": "evt-1"})
    assert resp.status_code == 200
    wait_until(lambda: len(sink.by_id("evt-1")) >= 2, timeout=10, interval=0.05,
               what="both events of evt-1")  # fmt: skip
    events = {e.headers["ce-type"]: e for e in sink.by_id("evt-1")}
    assert set(events) == {
        "org.kubeflow.serving.inference.request",
        "org.kubeflow.serving.inference.response",
    }
    for e in events.values():
        assert e.headers["ce-specversion"] == "1.0"
        assert e.headers["ce-inferenceservicename"] == MODEL
        assert e.headers["ce-modelversion"] == "v1"
        assert e.headers["ce-component"] == "predictor" and e.headers["ce-endpoint"] == "default"
        assert e.headers["ce-namespace"] and e.headers["ce-source"] and e.headers["ce-time"]
    import json

    request = json.loads(events["org.kubeflow.serving.inference.request"].body)
    response = json.loads(events["org.kubeflow.serving.inference.response"].body)
    assert request["instances"][0]["merchant_category"] == "electronics"
    assert response == resp.json()
    assert _metric(predictor.url, "kubeloop_payload_events_total", outcome="sent") >= 2


def test_prediction_metrics(predictor):
    assert _metric(predictor.url, "kubeloop_predictions_total", model=MODEL, version="v1") >= 1
    assert _metric(predictor.url, "kubeloop_inference_requests_total", status="ok") >= 1
    assert _metric(predictor.url, "kubeloop_inference_requests_total", status="client_error") >= 1
    assert _metric(predictor.url, "kubeloop_request_errors_total", reason="unknown_field") >= 1
    assert _metric(predictor.url, "kubeloop_prediction_score_count", version="v1") >= 1


def _paired_p50_ms(url_a: str, url_b: str, n: int = 150) -> tuple[float, float]:
    """Median latency of two servers measured alternately, so load changes hit both alike."""
    times: dict[str, list[float]] = {url_a: [], url_b: []}
    with httpx.Client() as client:
        for _ in range(n):
            for url in (url_a, url_b):
                start = time.perf_counter()
                client.post(
                    f"{url}/v1/models/{MODEL}:predict", json={"instances": [ROW]}
                ).raise_for_status()
                times[url].append((time.perf_counter() - start) * 1000)
    return statistics.median(times[url_a]), statistics.median(times[url_b])


@pytest.mark.parametrize("receiver", ["dead", "slow"])
def test_bad_receiver_never_slows_inference_and_drops_are_counted(
    predictor, registry, tmp_path, receiver
):
    with EventSink(delay_s=30.0, keep=False) as slow, Supervisor(tmp_path) as sup:
        url = f"http://127.0.0.1:{free_port()}/" if receiver == "dead" else slow.url
        down = start_predictor(sup, MODEL, "v1", registry.uri, logger_url=url,
                               extra=["--logger-queue-size", "64"])  # fmt: skip
        _paired_p50_ms(predictor.url, down.url, 20)  # warm-up
        healthy, degraded = _paired_p50_ms(predictor.url, down.url)
        assert degraded < healthy * 1.5 + 2.0, (healthy, degraded)
        wait_until(
            lambda: _metric(down.url, "kubeloop_payload_events_total", outcome="dropped") >= 200,
            timeout=15,
            what="200 payload events dropped",
        )
        assert _metric(down.url, "kubeloop_payload_events_total", outcome="sent") == 0
        assert _metric(down.url, "kubeloop_inference_requests_total", status="server_error") == 0


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
_near_rows = st.fixed_dictionaries(
    {},
    optional={name: _json_values for name in [*ROW, "account_id", "transaction_id"]}
    | {"extra": _json_values},
)
_bodies = st.one_of(
    _json_values,
    st.fixed_dictionaries({"instances": st.lists(_near_rows | _json_values, max_size=3)}),
    st.fixed_dictionaries(
        {
            "inputs": st.lists(
                st.fixed_dictionaries(
                    {
                        "name": st.sampled_from([*ROW, "x"]),
                        "datatype": st.sampled_from(
                            ["FP64", "INT64", "BYTES", "BOOL", "FP16", "nope"]
                        ),
                        "shape": st.lists(st.integers(-2, 3), max_size=3),
                        "data": _json_values,
                    }
                ),
                max_size=4,
            )
        }
    ),
)


def test_fuzzed_bodies_never_get_5xx(predictor):
    """Thousands of malformed V1 and V2 bodies: every answer is 2xx or 4xx, and the server stays ready."""
    import orjson

    client = httpx.Client(timeout=10)
    seen = {"n": 0}

    @settings(
        max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(body=_bodies, v2=st.booleans())
    def check(body, v2):
        path = f"/v2/models/{MODEL}/infer" if v2 else f"/v1/models/{MODEL}:predict"
        try:
            content = orjson.dumps(body)
        except TypeError:
            return
        resp = client.post(
            predictor.url + path, content=content, headers={"content-type": "application/json"}
        )
        seen["n"] += 1
        assert resp.status_code < 500, (path, body, resp.status_code, resp.text)

    try:
        check()
        # Non-finite floats (not JSON, but Python's json writes them) and raw garbage.
        for raw in (
            b'{"instances": [{"amount": NaN}]}',
            b"\xff\xfe",
            b"[]",
            b"null",
            b'{"instances": [' * 50,
        ):
            resp = client.post(predictor.url + f"/v1/models/{MODEL}:predict", content=raw)
            assert resp.status_code < 500, (raw, resp.text)
    finally:
        client.close()
    assert seen["n"] > 1000
    assert httpx.get(f"{predictor.url}/v2/health/ready").status_code == 200
    assert _predict(predictor.url, {"instances": [ROW]}).status_code == 200
    assert _metric(predictor.url, "kubeloop_inference_requests_total", status="server_error") == 0
    assert not math.isnan(_metric(predictor.url, "kubeloop_inference_requests_total", status="ok"))


def test_kubeloop_predict_cli(predictor):
    from typer.testing import CliRunner

    from kubeloop.cli.main import _register, app

    _register()
    pairs = [f"{k}={v}" for k, v in ROW.items()]
    result = CliRunner().invoke(app, ["predict", "--url", predictor.url, "--model", MODEL, *pairs])
    assert result.exit_code == 0, result.output
    assert '"model_version": "v1"' in result.output
    bad = CliRunner().invoke(app, ["predict", "--url", predictor.url, "--model", MODEL, "amount=5"])
    assert bad.exit_code == 1 and "merchant_category" in bad.output
