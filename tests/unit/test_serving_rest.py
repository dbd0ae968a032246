"""The predictor's REST edge (kubeloop.serving.rest.RequestGuard) around a stand-in app."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
from kserve import Model
from kserve import errors as kserve_errors
from kserve.errors import InvalidInput, ModelNotReady

from kubeloop.serving.inputs import Limits
from kubeloop.serving.rest import BOM, RequestGuard

MODEL, VERSION = "fraud-detector", "v3"
V2_BODY = {"inputs": [{"name": "amount", "shape": [1], "datatype": "FP64", "data": [1.0]}]}


class StandIn:
    """Answers 200 with what it saw; raises for the model named ``boom``."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    async def __call__(self, scope, receive, send) -> None:
        body = b""
        if scope["method"] == "POST":
            body = (await receive())["body"]
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.seen.append({"path": scope["path"], "headers": headers, "body": body})
        if "/boom" in scope["path"]:
            raise RuntimeError("boom")
        payload = orjson.dumps({"path": scope["path"]})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": payload})


def _guard(**limits):
    app, outcomes = StandIn(), []
    guard = RequestGuard(
        app,
        model_name=MODEL,
        version=VERSION,
        limits=Limits(**{"max_payload_bytes": 1000, "body_timeout_s": 0.3, **limits}),
        on_outcome=lambda status, outcome: outcomes.append((status, outcome.reason)),
    )
    return guard, app, outcomes


def _call(guard, method: str, path: str, **kw) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=guard)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.request(method, path, **kw)

    return asyncio.run(go())


V1 = f"/v1/models/{MODEL}:predict"
V2 = f"/v2/models/{MODEL}/infer"
JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("path", "seen"),
    [
        (f"/v2/models/{MODEL}/versions/{VERSION}", f"/v2/models/{MODEL}"),
        (f"/v2/models/{MODEL}/versions/{VERSION}/ready", f"/v2/models/{MODEL}/ready"),
    ],
)
def test_served_version_routes_are_the_unversioned_ones(path, seen):
    guard, app, _ = _guard()
    resp = _call(guard, "GET", path)
    assert resp.status_code == 200 and app.seen[0]["path"] == seen


def test_served_version_infer_is_the_unversioned_infer():
    guard, app, outcomes = _guard()
    resp = _call(guard, "POST", f"/v2/models/{MODEL}/versions/{VERSION}/infer", json=V2_BODY)
    assert resp.status_code == 200 and app.seen[0]["path"] == V2
    assert outcomes == [(200, None)]


@pytest.mark.parametrize(
    ("method", "path", "needle"),
    [
        ("GET", f"/v2/models/{MODEL}/versions/v9", "v9"),
        ("GET", f"/v2/models/{MODEL}/versions/v9/ready", "v9"),
        ("POST", f"/v2/models/{MODEL}/versions/v9/infer", "v9"),
        ("POST", f"/v2/models/other/versions/{VERSION}/infer", "other"),
    ],
)
def test_other_versions_are_404_naming_them(method, path, needle):
    guard, app, outcomes = _guard()
    resp = _call(guard, method, path, **({"json": V2_BODY} if method == "POST" else {}))
    assert resp.status_code == 404 and needle in resp.json()["error"] and not app.seen
    if method == "POST":
        assert outcomes == [(404, "unknown_model")]


def test_v2_json_without_content_type_is_json():
    guard, app, outcomes = _guard()
    resp = _call(guard, "POST", V2, content=orjson.dumps(V2_BODY))
    assert resp.status_code == 200
    assert app.seen[0]["headers"]["content-type"] == "application/json"
    assert outcomes == [(200, None)]


def test_v2_binary_extension_keeps_its_content_type():
    guard, app, _ = _guard()
    header = orjson.dumps(V2_BODY)
    headers = {"inference-header-content-length": str(len(header)),
               "content-type": "application/octet-stream"}  # fmt: skip
    resp = _call(guard, "POST", V2, content=header + b"\x00" * 8, headers=headers)
    assert resp.status_code == 200
    assert app.seen[0]["headers"]["content-type"] == "application/octet-stream"


@pytest.mark.parametrize(
    ("path", "headers", "content", "status", "needle", "reason"),
    [
        (V1, {"content-type": "text/plain"}, b"{}", 415, "text/plain", "unsupported_media_type"),
        (V2, {"content-type": "application/x-www-form-urlencoded"}, b"{}", 415, "x-www-form",
         "unsupported_media_type"),
        (V2, {"inference-header-content-length": "abc"}, b"{}", 400,
         "Inference-Header-Content-Length", "malformed_body"),
        (V2, {"inference-header-content-length": "99"}, b"{}", 400,
         "Inference-Header-Content-Length", "malformed_body"),
        (V1, {**JSON, "x-request-id": "r" * 129}, b"{}", 400, "X-Request-Id", "malformed_body"),
        (V1, {**JSON, "x-request-id": "a\x01b"}, b"{}", 400, "X-Request-Id", "malformed_body"),
        (V1, JSON, BOM + b"{}", 400, "byte order mark", "malformed_body"),
        (V2, JSON, BOM + orjson.dumps(V2_BODY), 400, "byte order mark", "malformed_body"),
        (V2, JSON, b'{"inputs": [', 400, "not valid JSON", "malformed_body"),
        (V2, JSON, b'{"inputs": null}', 400, "inputs", "malformed_body"),
        (V2, JSON, orjson.dumps({**V2_BODY, "instances": []}), 400, "instances", "unknown_field"),
        (V1, JSON, b"x" * 1001, 413, "1000", "payload_too_large"),
    ],
)  # fmt: skip
def test_edge_refusals_name_the_problem_and_are_counted(
    path, headers, content, status, needle, reason
):
    guard, app, outcomes = _guard()
    resp = _call(guard, "POST", path, content=content, headers=headers)
    assert resp.status_code == status, resp.text
    assert needle in resp.json()["error"]
    assert not app.seen
    assert outcomes == [(status, reason)]


def test_request_id_at_the_limit_passes():
    guard, app, _ = _guard()
    resp = _call(guard, "POST", V1, content=b"{}", headers={**JSON, "x-request-id": "r" * 128})
    assert resp.status_code == 200


def test_streamed_body_over_the_limit_is_413():
    guard, _, outcomes = _guard()

    async def chunks():
        for _ in range(3):
            yield b"y" * 400

    resp = _call(guard, "POST", V1, content=chunks(), headers=JSON)
    assert resp.status_code == 413 and outcomes == [(413, "payload_too_large")]


def test_an_escaping_exception_is_a_counted_500_json_answer():
    guard, _, outcomes = _guard()
    resp = _call(guard, "POST", "/v1/models/boom:predict", content=b"{}", headers=JSON)
    assert resp.status_code == 500 and "RuntimeError" in resp.json()["error"]
    assert "connection" not in resp.headers  # the keep-alive connection stays open
    assert outcomes == [(500, None)]


def _post_scope() -> dict:
    return {"type": "http", "method": "POST", "path": V1, "raw_path": V1.encode(),
            "headers": [(b"content-type", b"application/json")], "query_string": b""}  # fmt: skip


def test_only_the_stalled_body_of_concurrent_requests_times_out():
    guard, app, outcomes = _guard(body_timeout_s=0.2)
    answers: dict[str, list[dict]] = {"slow": [], "stalled": []}

    def receiver(pause: float):
        parts = [b'{"ins', b'tances": []}']

        async def receive():
            await asyncio.sleep(pause)
            if len(parts) > 1:
                return {"type": "http.request", "body": parts.pop(0), "more_body": True}
            if parts:
                return {"type": "http.request", "body": parts.pop(0), "more_body": False}
            await asyncio.sleep(3600)

        return receive

    async def go():
        async def request(name: str, pause: float):
            async def send(message):
                answers[name].append(message)

            await guard(_post_scope(), receiver(pause), send)

        # each chunk of "slow" comes after 0.08 s: slow, and whole within the limit
        await asyncio.wait_for(
            asyncio.gather(request("slow", 0.08), request("stalled", 3600)), timeout=5
        )

    asyncio.run(go())
    assert answers["slow"][0]["status"] == 200 and app.seen[0]["body"] == b'{"instances": []}'
    assert answers["stalled"][0]["status"] == 408
    assert sorted(outcomes) == [(200, None), (408, "body_timeout")]
    assert not guard._deadlines._reading  # nothing left armed


def test_a_read_cancelled_by_someone_else_stays_cancelled():
    """A cancellation that is not the deadline's (a shutdown) is not answered as a 408."""
    guard, _, _ = _guard(body_timeout_s=5)
    sent: list[dict] = []

    async def go():
        async def receive():
            await asyncio.sleep(3600)

        async def send(message):
            sent.append(message)

        task = asyncio.create_task(guard(_post_scope(), receive, send))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert sent == [] and not guard._deadlines._reading


def test_stalled_body_gets_408_and_closes_the_connection():
    guard, app, outcomes = _guard(body_timeout_s=0.2)
    sent: list[dict] = []

    async def go():
        async def receive():
            if not sent and not getattr(receive, "first", False):
                receive.first = True
                return {"type": "http.request", "body": b'{"ins', "more_body": True}
            await asyncio.sleep(3600)  # the client stalls

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": V1, "raw_path": V1.encode(),
                 "headers": [(b"content-type", b"application/json")], "query_string": b""}  # fmt: skip
        await asyncio.wait_for(guard(scope, receive, send), timeout=5)

    asyncio.run(go())
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert b"0.2 s" in sent[1]["body"]
    assert outcomes == [(408, "body_timeout")] and not app.seen


class Echo(Model):
    """A kserve Model whose V1 answers the guard gives itself: echoes the instances."""

    def __init__(self) -> None:
        super().__init__(MODEL, return_response_headers=True)
        self.version = VERSION
        self.ready = True
        self.seen: list[dict] = []

    def predict(self, payload, headers=None, response_headers=None):
        self.seen.append(headers)
        if payload.get("fail") == "input":
            raise InvalidInput("instance 0 has no amount")
        if payload.get("fail") == "bug":
            raise RuntimeError("bug")
        response_headers["x-request-id"] = headers.get("x-request-id", "new")
        return {"predictions": payload["instances"]}


def _direct_guard():
    app, model, outcomes = StandIn(), Echo(), []
    guard = RequestGuard(
        app,
        model_name=MODEL,
        version=VERSION,
        limits=Limits(max_payload_bytes=1000, body_timeout_s=0.3),
        on_outcome=lambda status, outcome: outcomes.append((status, outcome.reason)),
        model=model,
        # kserve's own handlers, as its server registers them on the app
        exception_handlers={
            InvalidInput: kserve_errors.invalid_input_handler,
            ModelNotReady: kserve_errors.model_not_ready_handler,
            Exception: kserve_errors.generic_exception_handler,
        },
    )
    return guard, app, model, outcomes


def test_v1_predict_is_answered_by_the_model_without_the_app():
    guard, app, model, outcomes = _direct_guard()
    body = {"instances": [{"amount": 1.5}]}
    resp = _call(guard, "POST", V1, json=body, headers={"x-request-id": "abc"})
    assert resp.status_code == 200 and resp.json() == {"predictions": body["instances"]}
    assert resp.headers["x-request-id"] == "abc"
    assert resp.headers["content-type"] == "application/json"
    assert int(resp.headers["content-length"]) == len(resp.content)
    assert app.seen == [] and model.seen[0]["x-request-id"] == "abc"
    assert outcomes == [(200, None)]


def test_v1_without_content_type_reaches_the_model_as_json():
    guard, _, model, _ = _direct_guard()
    resp = _call(guard, "POST", V1, content=orjson.dumps({"instances": [{"amount": 2}]}))
    assert resp.status_code == 200 and resp.json() == {"predictions": [{"amount": 2}]}
    assert model.seen[0]["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("content", "status", "needle", "reason"),
    [
        (b"{not json", 400, "Unrecognized request format", "malformed_body"),
        (orjson.dumps({"instances": [], "fail": "input"}), 400, "has no amount", "malformed_body"),
        (
            orjson.dumps({"instances": [], "fail": "bug"}),
            500,
            "internal error (RuntimeError)",
            None,
        ),
    ],
)
def test_v1_errors_get_the_answers_of_the_app(content, status, needle, reason):
    guard, app, _, outcomes = _direct_guard()
    resp = _call(guard, "POST", V1, content=content, headers=JSON)
    assert resp.status_code == status and needle in resp.json()["error"]
    assert app.seen == [] and outcomes == [(status, reason)]


def test_a_model_not_ready_is_503():
    guard, app, model, outcomes = _direct_guard()
    model.ready = False
    resp = _call(guard, "POST", V1, json={"instances": []})
    assert resp.status_code == 503 and "not ready" in resp.json()["error"]
    assert app.seen == [] and outcomes == [(503, None)]


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/models/other:predict", {}),
        (V1, {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s", "ce-type": "t"}),
        (V2, {}),
    ],
)
def test_other_models_cloudevents_and_v2_go_to_the_app(path, headers):
    guard, app, model, _ = _direct_guard()
    body = V2_BODY if path == V2 else {"instances": []}
    resp = _call(guard, "POST", path, json=body, headers=headers)
    assert resp.status_code == 200 and app.seen[0]["path"] == path and model.seen == []
