"""The local router in front of two real predictor processes."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from kubeloop.local.servers import start_predictor, start_router
from kubeloop.local.supervisor import Supervisor
from kubeloop.local.wait import wait_until
from kubeloop.registry import ModelRegistry
from kubeloop.training.quick import publish_quick_version
from tests.support.fixtures import ROUTINE_TRANSACTION
from tests.support.http import raw_request
from tests.support.sink import EventSink

pytestmark = pytest.mark.slow
MODEL = "fraud-detector"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("router")
    registry = ModelRegistry(str(root / "registry"))
    publish_quick_version(registry, MODEL, seed=11)
    publish_quick_version(registry, MODEL, seed=12)
    with EventSink() as sink, Supervisor(root / "runtime") as sup:
        v1, v2 = (start_predictor(sup, MODEL, v, registry.uri, wait=False) for v in ("v1", "v2"))
        router = start_router(
            sup, root / "split.json", logger_url=sink.url, registry_uri=registry.uri
        )
        yield {"v1": v1.wait_healthy(), "v2": v2.wait_healthy(), "router": router, "sink": sink,
               "root": root, "supervisor": sup}  # fmt: skip


def _split(stack, percent: float, shadow: bool = False, swap: bool = False) -> dict:
    stable, canary = ("v2", "v1") if swap else ("v1", "v2")
    return {
        "model": MODEL,
        "stable": {"version": stable, "url": stack[stable].url},
        "canary": {"version": canary, "url": stack[canary].url},
        "canary_percent": percent,
        "shadow": shadow,
    }


def _put(stack, split: dict) -> httpx.Response:
    return httpx.put(f"{stack['router'].url}/admin/split", json=split)


async def _fire(url: str, n: int, keys=None, concurrency: int = 16) -> list[httpx.Response]:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        timeout=30, limits=httpx.Limits(max_connections=concurrency)
    ) as client:

        async def one(i: int) -> httpx.Response:
            headers = {"x-kubeloop-key": keys[i]} if keys else {}
            async with sem:
                return await client.post(
                    f"{url}/v1/models/{MODEL}:predict",
                    json={"instances": [ROUTINE_TRANSACTION]},
                    headers=headers,
                )

        return await asyncio.gather(*(one(i) for i in range(n)))


def test_no_split_yet_is_503_and_bad_split_is_400(stack):
    resp = httpx.post(
        f"{stack['router'].url}/v1/models/{MODEL}:predict",
        json={"instances": [ROUTINE_TRANSACTION]},
    )
    assert resp.status_code == 503 and "split" in resp.json()["error"]
    bad = _put(stack, {**_split(stack, 10), "canary_percent": 140})
    assert bad.status_code == 400 and "canary_percent" in bad.json()["error"]


def _own_count(stack, code: str) -> float:
    """Answers the router gave itself (``role="router"``) with this status code."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{stack['router'].url}/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "kubeloop_router_requests_total"
        and s.labels["role"] == "router"
        and s.labels["code"] == code
    )


def _raw_put(url: str, head: str, chunks: list[bytes], request: str = "PUT /admin/split") -> bytes:
    return raw_request(url, request, head, chunks)


def test_admin_body_is_capped_before_it_is_read(stack):
    from kubeloop.router.server import ADMIN_BODY_LIMIT

    url = stack["router"].url
    before = _own_count(stack, "413")
    # Declared 50 MB, 1 KB sent: refused from Content-Length alone.
    answer = _raw_put(url, f"Content-Length: {50 * 2**20}\r\n", [b"x" * 1024])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"error"' in answer
    # Chunked (no length): refused once the cap is passed, the rest never sent.
    chunk = b"x" * 16384
    piece = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    n = ADMIN_BODY_LIMIT // len(chunk) + 2
    answer = _raw_put(url, "Transfer-Encoding: chunked\r\n", [piece] * n)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert _own_count(stack, "413") == before + 2
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_inference_body_is_capped_before_it_is_read(stack):
    small = start_router(
        stack["supervisor"], stack["root"] / "small-split.json", max_body_bytes=4096,
        name="router-small",
    )  # fmt: skip
    infer = f"POST /v2/models/{MODEL}/infer"
    before = _own_count({"router": small}, "413")
    answer = _raw_put(small.url, f"Content-Length: {50 * 2**20}\r\n", [b"x" * 1024], infer)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"larger than 4096 bytes" in answer
    piece = b"400\r\n" + b"x" * 1024 + b"\r\n"  # chunked, no length: 1 KiB pieces
    answer = _raw_put(small.url, "Transfer-Encoding: chunked\r\n", [piece] * 8, infer)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert _own_count({"router": small}, "413") == before + 2
    # Under the cap the body is taken (no split yet: 503, not 413).
    assert httpx.post(f"{small.url}/v2/models/{MODEL}/infer", content=b"{}").status_code == 503
    # The default cap (16 MiB) refuses a declared 50 MB body too.
    answer = _raw_put(stack["router"].url, f"Content-Length: {50 * 2**20}\r\n", [b"x"], infer)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_split_fields_are_not_coerced(stack):
    assert _put(stack, _split(stack, 10)).status_code == 200
    for field, value in (("canary_percent", "10"), ("shadow", "yes"), ("shadow", 1)):
        resp = _put(stack, {**_split(stack, 10), field: value})
        assert resp.status_code == 400, (field, value, resp.text)
        assert field in resp.json()["error"]
    resp = _put(stack, {**_split(stack, 10), "stable": {"version": 1, "url": stack["v1"].url}})
    assert resp.status_code == 400 and "stable.version" in resp.json()["error"]
    assert httpx.get(f"{stack['router'].url}/admin/split").json() == _split(stack, 10)


def test_a_split_naming_an_unregistered_version_is_refused(stack):
    assert _put(stack, _split(stack, 10)).status_code == 200
    before = _own_count(stack, "409")
    for role in ("stable", "canary"):
        split = _split(stack, 10)
        split[role] = {**split[role], "version": "v9"}
        resp = _put(stack, split)
        assert resp.status_code == 409 and "v9" in resp.json()["error"], resp.text
    assert _own_count(stack, "409") == before + 2
    assert httpx.get(f"{stack['router'].url}/admin/split").json() == _split(stack, 10)


def test_weighted_split_is_within_tolerance_and_sticky(stack):
    assert _put(stack, _split(stack, 20)).status_code == 200
    n = 2000
    keys = [f"user-{i % 400}" for i in range(n)]  # 400 users, 5 requests each
    responses = asyncio.run(_fire(stack["router"].url, n, keys))
    assert all(r.status_code == 200 for r in responses)
    versions = [r.json()["model_version"] for r in responses]
    share = versions.count("v2") / n
    # 400 independent users at p=0.2: sd of the user share is 0.02, so 4 sd either way.
    assert 0.12 < share < 0.28, share
    by_user: dict[str, set[str]] = {}
    for key, version, resp in zip(keys, versions, responses, strict=True):
        by_user.setdefault(key, set()).add(version)
        assert resp.headers["x-kubeloop-role"] == ("canary" if version == "v2" else "stable")
    assert all(len(v) == 1 for v in by_user.values())
    metrics = httpx.get(f"{stack['router'].url}/metrics").text
    assert (
        'kubeloop_router_traffic_percent{model="fraud-detector",role="canary",version="v2"} 20.0'
        in metrics
    )
    assert (
        'kubeloop_router_requests_total{code="200",model="fraud-detector",role="canary",version="v2"}'
        in metrics
    )


def test_entity_id_is_the_default_stickiness_key(stack):
    assert _put(stack, _split(stack, 50)).status_code == 200
    for account in range(1000, 1020):
        versions = {
            httpx.post(
                f"{stack['router'].url}/v1/models/{MODEL}:predict",
                json={"instances": [{**ROUTINE_TRANSACTION, "account_id": account}]},
            ).json()["model_version"]
            for _ in range(3)
        }
        assert len(versions) == 1


def _router_count(stack, role: str, version: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{stack['router'].url}/metrics").text):
        for s in family.samples:
            if (
                s.name == "kubeloop_router_requests_total"
                and s.labels["role"] == role
                and s.labels["version"] == version
            ):
                total += s.value
    return total


def test_shadow_traffic_never_reaches_the_caller(stack):
    assert _put(stack, _split(stack, 50, shadow=True)).status_code == 200
    before = _router_count(stack, "shadow", "v2")
    responses = asyncio.run(_fire(stack["router"].url, 400))
    assert {r.json()["model_version"] for r in responses} == {"v1"}
    assert {r.headers["x-kubeloop-role"] for r in responses} == {"stable"}
    mirrored = wait_until(
        lambda: (n := _router_count(stack, "shadow", "v2") - before) >= 120 and n,
        timeout=10,
        interval=0.1,
        what="120 mirrored requests",
    )
    assert 120 <= mirrored <= 280, mirrored  # about half of 400


def test_split_changes_are_atomic_under_load(stack):
    a, b = _split(stack, 0), _split(stack, 100, swap=True)
    assert _put(stack, a).status_code == 200

    async def flip():
        async with httpx.AsyncClient() as client:
            for i in range(40):
                resp = await client.put(
                    f"{stack['router'].url}/admin/split", json=b if i % 2 == 0 else a
                )
                assert resp.status_code == 200
                await asyncio.sleep(0.01)

    async def run():
        return await asyncio.gather(_fire(stack["router"].url, 800, concurrency=16), flip())

    responses, _ = asyncio.run(run())
    # Under `a` everything goes to stable v1; under `b` everything to canary v1 (stable is v2 at 0%).
    # A torn read would pair a role with the other split's backend, e.g. v2 answering.
    assert all(r.status_code == 200 for r in responses)
    assert {r.json()["model_version"] for r in responses} == {"v1"}
    assert {r.headers["x-kubeloop-role"] for r in responses} <= {"stable", "canary"}
    assert httpx.get(f"{stack['router'].url}/admin/split").json()["canary_percent"] == 0


def test_router_logs_events_tagged_with_the_answering_version(stack):
    assert _put(stack, _split(stack, 100)).status_code == 200
    resp = httpx.post(
        f"{stack['router'].url}/v1/models/{MODEL}:predict",
        json={"instances": [ROUTINE_TRANSACTION]},
        headers={"x-request-id": "rt-1"},
    )
    assert resp.status_code == 200 and resp.headers["x-request-id"] == "rt-1"
    events = wait_until(
        lambda: len(e := stack["sink"].by_id("rt-1")) >= 2 and e,
        timeout=10,
        interval=0.05,
        what="both events of rt-1",
    )
    assert len(events) == 2
    assert {e.headers["ce-modelversion"] for e in events} == {"v2"}
    assert {e.headers["ce-endpoint"] for e in events} == {"canary"}
    response = next(e for e in events if e.headers["ce-type"].endswith("response"))
    assert json.loads(response.body)["model_version"] == "v2"


def test_restart_keeps_the_split(stack):
    split = _split(stack, 35)
    assert _put(stack, split).status_code == 200
    stack["router"].stop()
    with start_router(stack["supervisor"], stack["root"] / "split.json") as again:
        assert httpx.get(f"{again.url}/admin/split").json()["canary_percent"] == 35
        assert httpx.get(f"{again.url}/readyz").status_code == 200
