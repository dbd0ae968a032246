"""The operator's own endpoints (``/healthz`` on every replica, ``/metrics``) under bad input:
never a 5xx for a client mistake, never down afterwards."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubeloop.operators.cluster.main import serve_health
from prometheus_client import CollectorRegistry, Counter, start_http_server

from kubeloop.local.ports import free_port
from tests.support.http import raw_request

STANDARD = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
paths = st.sampled_from(["/healthz", "/metrics", "/", "/healthz?x=1", "/%00", "/.."]) | st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=300
).map(lambda p: "/" + p)
header_lines = st.lists(
    st.tuples(
        st.sampled_from(["Content-Length", "Accept", "X-Request-Id", "Content-Type"])
        | st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=100),
    ),
    max_size=4,
)


@pytest.fixture(scope="module")
def endpoints():
    registry = CollectorRegistry()
    Counter("kubeloop_rollout_decisions", "Decisions.", ["decision"], registry=registry).labels(
        "hold"
    ).inc()
    metrics_port = free_port()
    server, thread = start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
    health = serve_health(0, lambda: True, host="127.0.0.1")
    yield {
        "health": f"http://127.0.0.1:{health.server_address[1]}",
        "metrics": f"http://127.0.0.1:{metrics_port}",
    }
    health.shutdown()
    server.shutdown()


def still_up(endpoints) -> None:
    assert httpx.get(endpoints["health"] + "/healthz").status_code == 200
    assert "kubeloop_rollout_decisions_total" in httpx.get(endpoints["metrics"] + "/metrics").text


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    which=st.sampled_from(["health", "metrics"]),
    method=st.sampled_from(STANDARD),
    path=paths,
    headers=header_lines,
)
def test_standard_methods_never_get_a_5xx(endpoints, which, method, path, headers):
    head = "".join(f"{k}: {v}\r\n" for k, v in headers if k.lower() != "content-length")
    answer = raw_request(endpoints[which], f"{method} {path}", head + "Connection: close\r\n", [])
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else None
    # No answer at all is the server closing a request it cannot parse: it must stay up.
    assert status is None or status < 500, answer[:300]
    if status is None:
        still_up(endpoints)


def test_a_method_the_health_endpoint_does_not_take_is_405(endpoints):
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        resp = httpx.request(method, endpoints["health"] + "/healthz")
        assert resp.status_code == 405 and "GET" in resp.headers["allow"], method
    assert httpx.head(endpoints["health"] + "/healthz").status_code == 200
    still_up(endpoints)


def test_garbage_and_cut_requests_leave_both_endpoints_up(endpoints):
    for which in ("health", "metrics"):
        for request in ("\x00\x01\x02", "GET", "GET /healthz HTTP/9.9", "G" * 70_000):
            raw_request(endpoints[which], request, "Connection: close\r\n", [])
        raw_request(endpoints[which], "GET /metrics", "Content-Length: 1000000\r\n", [b"x" * 10])
    still_up(endpoints)
