"""Client mistakes never get a 5xx from the drift service: hypothesis over its endpoints
(payload events, feedback, watch, status and report queries), against the real service
(its own venv) watching a real registry version."""

from __future__ import annotations

import copy
import json
import string

import httpx
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubeloop.contracts import payload_events as pe
from kubeloop.drift.config import ServiceSettings
from kubeloop.local.drift import start_drift_service
from kubeloop.local.supervisor import Supervisor
from kubeloop.registry import ModelRegistry
from kubeloop.training.quick import publish_quick_version
from tests.support.events import payload_headers, payload_pair
from tests.support.http import chunked, raw_request
from tests.support.strategies import json_value

pytestmark = pytest.mark.slow
MODEL = "fraud-detector"
# The error-rate detector only: its set-up takes a second, so the fuzz is about HTTP.
LIGHT = {"ert": 100, "mmd": False, "univariate": False, "prediction": False,
         "error_rate": True, "error_windows": [10, 30]}  # fmt: skip
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift-fuzz")
    registry = ModelRegistry(str(root / "registry"))
    publish_quick_version(registry, MODEL, seed=0, n_accounts=200, days=7)
    frame = pd.read_parquet(root / "registry" / MODEL / "versions" / "v1" / "reference.parquet")
    row = {
        k: (v.item() if hasattr(v, "item") else v)
        for k, v in frame.iloc[0].items()
        if k not in ("is_fraud", "prediction_score", "prediction")
    }
    with (
        Supervisor(root / "runtime") as sup,
        start_drift_service(sup, registry.uri, cache_dir=root / "drift-cache") as svc,
        httpx.Client(base_url=svc.url, timeout=60) as client,
    ):
        watch = {"model": MODEL, "version": "v1", "detectors": LIGHT}
        client.post("/v1/watch", json=watch).raise_for_status()
        yield {"client": client, "row": row}


# --- strategies ---------------------------------------------------------------------------
ascii_text = st.text(alphabet=string.printable.strip() + " ", max_size=30)
header_text = ascii_text.map(str.strip)  # the client (h11) sends no value with outer whitespace
long_text = st.text(alphabet=string.ascii_letters, min_size=250, max_size=400)
CE_HEADERS = (pe.CE_SPECVERSION, pe.CE_ID, pe.CE_TYPE, pe.CE_SOURCE, pe.CE_TIME,
              pe.CE_INFERENCE_SERVICE, pe.CE_MODEL_VERSION, pe.CE_ENDPOINT, "Content-Type")  # fmt: skip


@st.composite
def events(draw, row: dict) -> tuple[dict[str, str], bytes]:
    """A payload event with some headers and body fields changed, or something else."""
    kind = draw(st.sampled_from(["request", "response"]))
    headers = payload_headers(kind, draw(header_text.filter(bool)), MODEL, "v1")
    for name in draw(st.lists(st.sampled_from(CE_HEADERS), max_size=3)):
        choice = draw(st.sampled_from(["drop", "text", "long", "spec"]))
        if choice == "drop":
            headers.pop(name, None)
        else:
            headers[name] = draw(
                {"text": header_text, "long": long_text,
                 "spec": st.sampled_from(["0.3", "1.0", "2", "", "application/cloudevents+json"])}[choice]
            )  # fmt: skip
    shape = draw(st.sampled_from(["instances", "predictions", "json", "bytes"]))
    if shape == "bytes":
        return headers, draw(st.binary(max_size=300))
    if shape == "json":
        return headers, json.dumps(draw(json_value)).encode()
    if shape == "predictions":
        pred = {"score": 0.2, "label": 0}
        for key in draw(st.lists(st.sampled_from(["score", "label", "x"]), max_size=2)):
            pred[key] = draw(json_value | st.sampled_from([10**400, 1e308, -1, 2]))
        return headers, json.dumps({"predictions": [pred]}).encode()
    inst = copy.deepcopy(row)
    for key in draw(st.lists(st.sampled_from([*row, "x" * 300, "account_id"]), max_size=3)):
        inst[key] = draw(json_value | st.sampled_from([10**400, "casino", True]))
    return headers, json.dumps({"instances": draw(st.sampled_from([[inst], [], inst]))}).encode()


feedback_bodies = st.one_of(
    st.binary(max_size=200).map(lambda b: {"content": b}),
    json_value.map(lambda v: {"json": v}),
    st.fixed_dictionaries(
        {"request_id": ascii_text | long_text | json_value, "labels": json_value}
    ).map(lambda v: {"json": v}),
    st.lists(
        st.fixed_dictionaries({"request_id": ascii_text, "labels": st.lists(st.integers(0, 2))}),
        max_size=3,
    ).map(lambda items: {"json": {"feedback": items}}),
)
# Never a valid watch of the served version (that would rebuild its detectors): the known
# model comes with an unknown version or an unknown detector setting.
watch_bodies = st.one_of(
    st.binary(max_size=200).map(lambda b: {"content": b}),
    json_value.map(lambda v: {"json": v}),
    st.fixed_dictionaries(
        {"model": st.sampled_from([MODEL, "other-model"]) | ascii_text | json_value,
         "version": st.sampled_from(["v9", "../v1", "latest"]) | ascii_text | st.integers() | json_value},
        optional={
            "registry_uri": st.sampled_from(["/nonexistent", "", "a\x00b"]) | ascii_text | json_value,
            "detectors": st.dictionaries(
                st.sampled_from(["bogus", "ert", "mmd_window", "error_windows"]), json_value, max_size=3,
            ).map(lambda d: {**d, "bogus": 1}) | json_value,
        },
    ).map(lambda v: {"json": v}),
)  # fmt: skip
status_queries = st.dictionaries(
    st.sampled_from(["wait", "timeout", "model", "version", "x"]),
    st.sampled_from(["idle", "abc", "nan", "inf", "-1", "1e9", "0", "0.01", ""]) | ascii_text,
    max_size=3,
)


# --- checks -------------------------------------------------------------------------------
def check_answer(resp: httpx.Response) -> None:
    assert resp.status_code < 500, (resp.status_code, resp.text[:500])
    if resp.status_code >= 400:
        body = resp.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str), resp.text[:500]
        assert len(resp.content) < 2048, resp.content[:200]  # never echoes a large input


def check_still_ready(service) -> None:
    client = service["client"]
    assert client.get("/readyz").status_code == 200
    _, pair = payload_pair([service["row"]], [0.2], [0], MODEL, "v1")
    for headers, body in pair:
        resp = client.post("/", headers=headers, content=body)
        assert resp.status_code == 202, resp.text


def test_payload_events_answer_client_mistakes_with_4xx(service):
    client = service["client"]

    @FUZZ
    @given(event=events(service["row"]))
    def run(event):
        headers, body = event
        check_answer(client.post("/", headers=headers, content=body))

    run()
    check_still_ready(service)


def test_json_endpoints_answer_client_mistakes_with_4xx(service):
    client = service["client"]

    @FUZZ
    @given(
        feedback=feedback_bodies,
        watch=watch_bodies,
        query=status_queries,
        path=st.sampled_from(["/v1/status", "/v1/report", "/v1/watch", "/v1/feedback", "/nope"]),
        method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    )
    def run(feedback, watch, query, path, method):
        check_answer(client.post("/v1/feedback", **feedback))
        check_answer(client.post("/v1/watch", **watch))
        check_answer(client.get("/v1/status", params=query))
        check_answer(client.get("/v1/report", params=query))
        check_answer(client.request(method, path, params=query))

    run()
    check_still_ready(service)


def test_bodies_over_the_cap_are_refused_before_they_are_read(service):
    url = str(service["client"].base_url)
    cap = ServiceSettings().max_body_bytes
    declared = f"Content-Length: {cap + 1}\r\nContent-Type: application/json\r\n"
    for request in ("POST /", "POST /v1/feedback", "POST /v1/watch"):
        answer = raw_request(url, request, declared, [b"{"])
        assert answer.startswith(b"HTTP/1.1 413"), (request, answer[:300])
        assert b'"payload_too_large"' in answer
    # No length declared: refused once the streamed body passes the cap.
    answer = raw_request(url, "POST /", "Transfer-Encoding: chunked\r\n", chunked(cap // 2**20 + 2))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    metrics = service["client"].get("/metrics").text
    line = next(x for x in metrics.splitlines() if 'reason="payload_too_large"' in x)
    assert float(line.rsplit(" ", 1)[1]) >= 4, line
    check_still_ready(service)


def test_oversized_and_old_events_are_refused_with_a_counted_reason(service):
    """The findings behind the fuzz, one by one: a 60 KB Ce-Id, spec 0.3, a 5 MB echo."""
    client = service["client"]
    body = json.dumps({"instances": [service["row"]]}).encode()
    huge = client.post(
        "/", headers=payload_headers("request", "i" * 60_000, MODEL, "v1"), content=body
    )
    assert huge.status_code == 400 and huge.json()["reason"] == "attribute_too_long"
    assert len(huge.content) < 1024
    old = {**payload_headers("request", "old-spec", MODEL, "v1"), pe.CE_SPECVERSION: "0.3"}
    resp = client.post("/", headers=old, content=body)
    assert resp.status_code == 400 and resp.json()["reason"] == "unsupported_specversion"
    echo = client.post("/v1/feedback", json={"request_id": "r" * 5_000_000, "labels": [1]})
    assert echo.status_code == 404 and len(echo.content) < 1024
    bad_timeout = client.get("/v1/status", params={"wait": "idle", "timeout": "abc"})
    assert bad_timeout.status_code == 400 and "timeout" in bad_timeout.json()["error"]
    metrics = client.get("/metrics").text
    for reason in ("attribute_too_long", "unsupported_specversion"):
        line = next(x for x in metrics.splitlines() if f'reason="{reason}"' in x)
        assert float(line.rsplit(" ", 1)[1]) >= 1, line
