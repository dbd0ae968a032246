"""The local traffic router: what Knative and KServe do for canaries in a cluster.

An ASGI app in front of the stable and canary predictor processes. Each inference
request is routed by :func:`kubeloop.router.split.choose` (weighted, sticky by key,
or mirrored in shadow mode), forwarded over pooled keep-alive connections, counted
per version and role, and logged as KServe-format CloudEvents tagged with the version
that answered. ``GET/PUT /admin/split`` reads and atomically replaces the split, which
is persisted to ``--split-file`` so a restart keeps it.

    python -m kubeloop.router --port 8100 --split-file var/runtime/split.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from kubeloop.serving.heap import freeze_startup_heap
from kubeloop.serving.metrics import LATENCY_BUCKETS
from kubeloop.serving.payload import EventContext, PayloadLogger
from kubeloop.router.split import Split, SplitError, choose, load_split, parse_split, save_split

ROUTER_REQUESTS = Counter(
    "kubeloop_router_requests_total",
    "Requests through the router by version, role and HTTP status code.",
    ["model", "version", "role", "code"],
)
ROUTER_DURATION = Histogram(
    "kubeloop_router_request_duration_seconds",
    "Router-observed latency, forwarding included.",
    ["model", "version", "role"],
    buckets=LATENCY_BUCKETS,
)
ROUTER_TRAFFIC = Gauge(
    "kubeloop_router_traffic_percent",
    "Share of traffic each version gets (shadow: mirrored share).",
    ["model", "version", "role"],
)

KEY_HEADER = b"x-kubeloop-key"
_FORWARDED = (b"content-type", b"x-request-id", b"inference-header-content-length", b"accept")
_RETURNED = (
    "content-type",
    "x-request-id",
    "x-kubeloop-version",
    "inference-header-content-length",
)


def _json_response(status: int, body: Any, extra: list | None = None) -> tuple[int, list, bytes]:
    data = orjson.dumps(body)
    return status, [(b"content-type", b"application/json"), *(extra or [])], data


class Router:
    def __init__(
        self,
        split_file: Path,
        *,
        logger_url: str | None = None,
        entity: str = "account_id",
        timeout_s: float = 30.0,
        namespace: str = "default",
    ) -> None:
        self.split_file = Path(split_file)
        self.split: Split | None = load_split(self.split_file)
        self.entity = entity
        self.timeout_s = timeout_s
        self.namespace = namespace
        self.payload = PayloadLogger(logger_url) if logger_url else None
        self._session = None
        self._lock = asyncio.Lock()
        self._shadow_tasks: set[asyncio.Task] = set()
        self._published: set[tuple[str, str, str]] = set()
        if self.split is not None:
            self._publish_gauges(self.split)

    # --- ASGI ----------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        body = await _read_body(receive)
        if path == "/admin/split":
            status, headers, data = await self._admin(method, body)
        elif path in ("/healthz", "/livez"):
            status, headers, data = _json_response(200, {"status": "alive"})
        elif path == "/readyz":
            ready = self.split is not None
            status, headers, data = _json_response(200 if ready else 503, {"ready": ready})
        elif path == "/metrics":
            status, headers, data = (
                200,
                [(b"content-type", CONTENT_TYPE_LATEST.encode())],
                generate_latest(REGISTRY),
            )
        else:
            status, headers, data = await self._proxy(scope, method, path, body)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def close(self) -> None:
        for task in list(self._shadow_tasks):
            task.cancel()
        if self.payload is not None:
            await self.payload.drain(1.0)
            await self.payload.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- admin ---------------------------------------------------------------------------
    async def _admin(self, method: str, body: bytes):
        if method == "GET":
            if self.split is None:
                return _json_response(404, {"error": "no split configured yet; PUT /admin/split"})
            return _json_response(200, self.split.model_dump())
        if method != "PUT":
            return _json_response(
                405, {"error": f"{method} not allowed on /admin/split; use GET or PUT"}
            )
        try:
            split = parse_split(body)
        except SplitError as exc:
            return _json_response(400, {"error": str(exc)})
        async with self._lock:
            # Persist first: the split in memory is never ahead of the one on disk.
            await asyncio.to_thread(save_split, self.split_file, split)
            self.split = split  # one reference swap: every request sees old or new, never a mix
            self._publish_gauges(split)
        return _json_response(200, split.model_dump())

    def _publish_gauges(self, split: Split) -> None:
        current = {(split.model, split.stable.version, "stable")}
        if split.canary is not None:
            current.add((split.model, split.canary.version, "shadow" if split.shadow else "canary"))
        for labels in self._published - current:
            ROUTER_TRAFFIC.labels(*labels).set(0)
        for model, version, role in current:
            ROUTER_TRAFFIC.labels(model, version, role).set(split.percent(role))
        self._published |= current

    # --- proxying ------------------------------------------------------------------------
    def _session_get(self):
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=300),
                auto_decompress=False,
            )
        return self._session

    def _key(self, headers: dict[bytes, bytes], parsed: Any) -> str | None:
        if KEY_HEADER in headers:
            return headers[KEY_HEADER].decode("latin-1")
        if isinstance(parsed, dict):
            instances = parsed.get("instances")
            if isinstance(instances, list) and instances and isinstance(instances[0], dict):
                value = instances[0].get(self.entity)
                return None if value is None else str(value)
            for tensor in parsed.get("inputs") or []:
                if (
                    isinstance(tensor, dict)
                    and tensor.get("name") == self.entity
                    and tensor.get("data")
                ):
                    return str(tensor["data"][0])
        return None

    async def _proxy(self, scope, method: str, path: str, body: bytes):
        split = self.split  # read once: the whole request uses one split
        if split is None:
            return _json_response(503, {"error": "the router has no split yet; PUT /admin/split"})
        headers = dict(scope["headers"])
        parsed = None
        if body and (KEY_HEADER not in headers or self.payload is not None):
            with contextlib.suppress(orjson.JSONDecodeError):
                parsed = orjson.loads(body)
        route = choose(split, self._key(headers, parsed))
        request_id = headers.get(b"x-request-id", b"").decode("latin-1") or str(uuid.uuid4())
        out_headers = {
            k.decode(): v.decode("latin-1") for k, v in headers.items() if k in _FORWARDED
        }
        out_headers["x-request-id"] = request_id
        query = scope.get("query_string", b"")
        target = f"{path}?{query.decode('latin-1')}" if query else path
        if route.mirror is not None:
            task = asyncio.create_task(
                self._shadow(split, route.mirror, method, target, body, out_headers)
            )
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)
        start = time.perf_counter()
        try:
            status, resp_headers, data = await self._forward(
                route.backend.url, method, target, body, out_headers
            )
        except Exception as exc:  # noqa: BLE001 - an unreachable predictor is a 502, never a crash
            status, resp_headers, data = _json_response(
                502,
                {"error": f"{route.role} predictor {route.backend.version} unreachable: {exc!r}"},
            )
        elapsed = time.perf_counter() - start
        version = route.backend.version
        ROUTER_REQUESTS.labels(split.model, version, route.role, str(status)).inc()
        ROUTER_DURATION.labels(split.model, version, route.role).observe(elapsed)
        resp_headers.append((b"x-kubeloop-role", route.role.encode()))
        if (
            self.payload is not None
            and status == 200
            and isinstance(parsed, dict)
            and "instances" in parsed
        ):
            ctx = EventContext(
                model=split.model,
                version=version,
                endpoint=route.endpoint,
                namespace=self.namespace,
                source=f"kubeloop/router/{split.model}",
            )
            with contextlib.suppress(orjson.JSONDecodeError):
                self.payload.log(ctx, request_id, parsed, orjson.loads(data))
        return status, resp_headers, data

    async def _forward(
        self, base: str, method: str, target: str, body: bytes, headers: dict[str, str]
    ):
        session = self._session_get()
        async with session.request(
            method, base + target, data=body or None, headers=headers
        ) as resp:
            data = await resp.read()
            out = [
                (k.encode(), resp.headers[k].encode("latin-1"))
                for k in _RETURNED
                if k in resp.headers
            ]
            return resp.status, out, data

    async def _shadow(
        self, split: Split, backend, method: str, target: str, body: bytes, headers: dict
    ) -> None:
        start = time.perf_counter()
        try:
            status, _, _ = await self._forward(backend.url, method, target, body, headers)
        except Exception:  # noqa: BLE001 - shadow failures never reach the caller
            status = 502
        ROUTER_REQUESTS.labels(split.model, backend.version, "shadow", str(status)).inc()
        ROUTER_DURATION.labels(split.model, backend.version, "shadow").observe(
            time.perf_counter() - start
        )


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="python -m kubeloop.router", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--host", default="127.0.0.1", help="listen address")
    parser.add_argument(
        "--split-file", dest="split_file", type=Path, required=True, help="persisted split (JSON)"
    )
    parser.add_argument(
        "--logger-url", dest="logger_url", default=None, help="CloudEvents payload receiver"
    )
    parser.add_argument("--namespace", default="default", help="Ce-Namespace value")
    parser.add_argument(
        "--entity", default="account_id", help="stickiness key field when no X-Kubeloop-Key"
    )
    args = parser.parse_args(argv)
    router = Router(
        args.split_file, logger_url=args.logger_url, entity=args.entity, namespace=args.namespace
    )
    freeze_startup_heap()
    uvicorn.run(
        router,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
