"""Client mistakes never get a 5xx from the router: hypothesis over its admin API and its
proxy endpoints, in front of two real predictors and a registry."""

from __future__ import annotations

import copy
import string
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from kubeloop.local.servers import start_predictor, start_router
from kubeloop.local.supervisor import Supervisor
from kubeloop.registry import ModelRegistry
from kubeloop.training.quick import publish_quick_version
from tests.support.fixtures import ROUTINE_TRANSACTION
from tests.support.strategies import json_value

pytestmark = pytest.mark.slow
MODEL = "fraud-detector"

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
PROBES = ("/healthz", "/livez", "/readyz", "/metrics")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("router-fuzz")
    registry = ModelRegistry(str(root / "registry"))
    publish_quick_version(registry, MODEL, seed=11)
    publish_quick_version(registry, MODEL, seed=12)
    with Supervisor(root / "runtime") as sup:
        v1, v2 = (start_predictor(sup, MODEL, v, registry.uri, wait=False) for v in ("v1", "v2"))
        router = start_router(sup, root / "split.json", registry_uri=registry.uri)
        v1.wait_healthy(), v2.wait_healthy()
        split = {
            "model": MODEL,
            "stable": {"version": "v1", "url": v1.url},
            "canary": {"version": "v2", "url": v2.url},
            "canary_percent": 50.0,
            "shadow": False,
        }
        with httpx.Client(base_url=router.url, timeout=30) as client:
            yield {"router": router, "client": client, "split": split}


# --- strategies ---------------------------------------------------------------------------
ascii_text = st.text(alphabet=string.printable.strip() + " ", max_size=40)
SPLIT_PATHS = ("model", "stable", "stable.version", "stable.url", "canary", "canary.version",
               "canary.url", "canary_percent", "shadow", "surprise", "stable.surprise")  # fmt: skip


@st.composite
def split_bodies(draw, good: dict) -> bytes | dict:
    """A valid split with a few fields replaced or removed, or something else entirely."""
    kind = draw(st.sampled_from(["mutated", "mutated", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return {"json": draw(json_value)}
    split = copy.deepcopy(good)
    for path in draw(st.lists(st.sampled_from(SPLIT_PATHS), min_size=1, max_size=3)):
        *parents, leaf = path.split(".")
        target = split
        for p in parents:
            target = target.get(p) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            continue
        if draw(st.booleans()):
            target.pop(leaf, None)
        else:
            target[leaf] = draw(
                json_value | st.sampled_from(["10", "yes", "v9", "http://127.0.0.1:1", 1e308])
            )
    return {"json": split}


def proxy_paths() -> st.SearchStrategy[str]:
    segment = st.text(max_size=20).map(lambda s: quote(s, safe=""))
    templates = st.sampled_from([
        "/v1/models/{}:predict", "/v2/models/{}/infer", "/v2/models/{}", "/v1/models/{}",
        "/{}", "/v2/{}", "/admin/{}",
    ])  # fmt: skip
    named = st.sampled_from([f"/v1/models/{MODEL}:predict", f"/v2/models/{MODEL}/infer",
                             f"/v2/models/{MODEL}", f"/v1/models/{MODEL}"])  # fmt: skip
    built = st.builds(lambda t, s: t.format(s), templates, segment)
    return (named | built).filter(lambda p: p not in PROBES and p != "/admin/split")


@st.composite
def proxy_bodies(draw) -> dict:
    kind = draw(st.sampled_from(["v1", "v2", "json", "bytes", "none"]))
    if kind == "bytes":
        return {"content": draw(st.binary(max_size=300))}
    if kind == "none":
        return {}
    if kind == "json":
        return {"json": draw(json_value)}
    if kind == "v1":
        row = dict(ROUTINE_TRANSACTION)
        for key in draw(
            st.lists(st.sampled_from([*ROUTINE_TRANSACTION, "account_id", "x"]), max_size=3)
        ):
            row[key] = draw(json_value)
        return {"json": {"instances": draw(st.sampled_from([[row], [], row, [row, 5]]))}}
    inputs = [
        {"name": name, "shape": [1], "datatype": "BYTES" if isinstance(v, str) else "FP64",
         "data": [v]} for name, v in ROUTINE_TRANSACTION.items()
    ]  # fmt: skip
    for tensor in draw(st.lists(st.sampled_from(inputs), max_size=2)):
        tensor[draw(st.sampled_from(["data", "shape", "datatype", "name"]))] = draw(json_value)
    return {"json": {"id": draw(ascii_text), "inputs": draw(st.sampled_from([inputs, {}, 5]))}}


headers = st.dictionaries(
    st.sampled_from(
        [
            "x-kubeloop-key",
            "x-request-id",
            "content-type",
            "accept",
            "inference-header-content-length",
            "x-other",
        ]
    ),  # fmt: skip
    ascii_text.map(str.strip),  # the client (h11) sends no value with outer whitespace
    max_size=4,
)


# --- checks -------------------------------------------------------------------------------
def counted(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "kubeloop_router_requests_total"
    )


def check_answer(resp: httpx.Response, method: str) -> None:
    assert resp.status_code < 500, (resp.status_code, resp.text[:500])
    if resp.status_code >= 400 and method != "HEAD":
        body = resp.json()
        assert isinstance(body, dict), resp.text[:500]
        # The router's own refusals are {"error": ...}; a predictor's 4xx (it carries
        # X-Kubeloop-Role) passes through as the predictor wrote it (its own contract).
        if "x-kubeloop-role" not in resp.headers:
            assert isinstance(body.get("error"), str), resp.text[:500]


def check_still_serving(stack) -> None:
    client = stack["client"]
    assert client.get("/healthz").status_code == 200
    assert client.put("/admin/split", json=stack["split"]).status_code == 200
    assert client.get("/readyz").status_code == 200
    resp = client.post(f"/v1/models/{MODEL}:predict", json={"instances": [ROUTINE_TRANSACTION]})
    assert resp.status_code == 200 and resp.json()["model_version"] in ("v1", "v2"), resp.text


def test_admin_api_answers_client_mistakes_with_4xx(stack):
    client = stack["client"]
    assert client.put("/admin/split", json=stack["split"]).status_code == 200
    sent = [0]
    before = counted(client)

    @FUZZ
    @given(
        method=st.sampled_from(["GET", "PUT", "PUT", "PUT", "POST", "DELETE", "PATCH"]),
        body=split_bodies(stack["split"]),
        extra=headers,
        query=st.dictionaries(ascii_text, ascii_text, max_size=3),
    )
    def run(method, body, extra, query):
        kwargs = body if isinstance(body, dict) else {"content": body}
        resp = client.request(method, "/admin/split", headers=extra, params=query, **kwargs)
        sent[0] += 1
        check_answer(resp, method)
        if resp.status_code == 200 and method == "PUT":  # a valid variant: put the good one back
            assert client.put("/admin/split", json=stack["split"]).status_code == 200
            sent[0] += 1

    run()
    # Every answer, refusals included, is counted (by code) in the router's metrics.
    assert counted(client) - before == sent[0]
    check_still_serving(stack)


def test_proxy_answers_client_mistakes_with_4xx(stack):
    client = stack["client"]
    assert client.put("/admin/split", json=stack["split"]).status_code == 200
    sent = [0]
    before = counted(client)

    @FUZZ
    @given(
        method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE", "HEAD"]),
        path=proxy_paths(),
        body=proxy_bodies(),
        extra=headers,
        query=st.dictionaries(ascii_text, ascii_text, max_size=3),
    )
    def run(method, path, body, extra, query):
        resp = client.request(method, path, headers=extra, params=query, **body)
        sent[0] += 1
        check_answer(resp, method)

    run()
    assert counted(client) - before == sent[0]
    check_still_serving(stack)
