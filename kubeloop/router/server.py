"""The local traffic router: what Knative and KServe do for canaries in a cluster.

An ASGI app in front of the stable and canary predictor processes. Each inference
request is routed by :func:`kubeloop.router.split.choose` (weighted, sticky by key,
or mirrored in shadow mode), forwarded over pooled keep-alive connections, counted
per version and role, and logged as KServe-format CloudEvents tagged with the version
that answered. ``GET/PUT /admin/split`` reads and atomically replaces the split, which
is persisted to ``--split-file`` so a restart keeps it. With ``--registry-uri`` a split
naming a version the registry lacks is refused (409) before it takes effect.

Client mistakes get a 4xx ``{"error": ...}`` and never a 5xx: the admin body is capped
(:data:`ADMIN_BODY_LIMIT`, 413 before the rest is read), so is an inference body
(``--max-body-bytes``, default :data:`PROXY_BODY_LIMIT`), the split is validated strictly,
and a request the router cannot forward as sent is a 400. Every answer except probes and
scrapes is counted in ``kubeloop_router_requests_total``: proxied ones under the version
and role that answered, the router's own (admin API, refusals) under ``role="router"``.

    python -m kubeloop.router --port 8100 --split-file var/runtime/split.json \
        --registry-uri var/registry
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
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

from kubeloop.bodies import BodyTooLarge, declared_length, read_body
from kubeloop.router.split import Split, SplitError, choose, load_split, parse_split, save_split
from kubeloop.serving.heap import freeze_startup_heap
from kubeloop.serving.metrics import LATENCY_BUCKETS
from kubeloop.serving.payload import EventContext, PayloadLogger

log = logging.getLogger("kubeloop.router")

ADMIN_BODY_LIMIT = 64 * 1024
"""Largest ``PUT /admin/split`` body in bytes (a split is a few hundred): larger is a 413."""
PROXY_BODY_LIMIT = 16 * 1024 * 1024
"""Default largest inference body the router forwards (``--max-body-bytes``): larger is a
413 before the rest is read. Above the predictors' own default cap (1 MiB), which they
answer themselves."""
ROUTER_ROLE = "router"
"""The ``role`` label of answers the router gives itself (admin API, refusals, its own faults)."""

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


def _too_large(limit: int) -> tuple[int, list, bytes]:
    # Connection: close, so the server stops taking the upload instead of draining it.
    return _json_response(
        413,
        {"error": f"request body is larger than {limit} bytes"},
        [(b"connection", b"close")],
    )


class Router:
    def __init__(
        self,
        split_file: Path,
        *,
        logger_url: str | None = None,
        entity: str = "account_id",
        timeout_s: float = 30.0,
        namespace: str = "default",
        registry_uri: str | None = None,
        max_body_bytes: int = PROXY_BODY_LIMIT,
    ) -> None:
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
        self.max_body_bytes = max_body_bytes
        self.split_file = Path(split_file)
        self.registry = None
        if registry_uri:
            from kubeloop.registry import ModelRegistry

            self.registry = ModelRegistry(registry_uri)
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
        try:
            status, headers, data = await self._answer(scope, receive, path, method)
        except Exception:  # a bug, never the client's fault: logged, counted, answered
            log.exception("router failed on %s %s", method, path[:200])
            status, headers, data = _json_response(
                500, {"error": "internal router error; see the router's log"}
            )
            self._count_own(500)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _answer(self, scope, receive, path: str, method: str) -> tuple[int, list, bytes]:
        if path == "/admin/split":
            status, headers, data = await self._admin(scope, method, receive)
            self._count_own(status)
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
            body = await self._inference_body(scope, receive)
            if body is None:  # over the cap: refused, counted as the router's own answer
                self._count_own(413)
                return _too_large(self.max_body_bytes)
            status, headers, data = await self._proxy(scope, method, path, body)
        return status, headers, data

    async def _inference_body(self, scope, receive) -> bytes | None:
        """The body to forward, or None when it is over ``max_body_bytes`` (declared or read)."""
        declared = declared_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            return None
        try:
            return await read_body(receive, self.max_body_bytes)
        except BodyTooLarge:
            return None

    def _count_own(self, status: int) -> None:
        split = self.split
        model = split.model if split is not None else ""
        ROUTER_REQUESTS.labels(model, "", ROUTER_ROLE, str(status)).inc()

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
    async def _admin(self, scope, method: str, receive):
        if method == "GET":
            if self.split is None:
                return _json_response(404, {"error": "no split configured yet; PUT /admin/split"})
            return _json_response(200, self.split.model_dump())
        if method != "PUT":
            return _json_response(
                405, {"error": f"{method} not allowed on /admin/split; use GET or PUT"}
            )
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return _json_response(400, {"error": "Content-Length is not a number"})
            if int(declared) > ADMIN_BODY_LIMIT:
                return _too_large(ADMIN_BODY_LIMIT)
        try:
            body = await read_body(receive, ADMIN_BODY_LIMIT)
        except BodyTooLarge:
            return _too_large(ADMIN_BODY_LIMIT)
        try:
            split = parse_split(body)
        except SplitError as exc:
            return _json_response(400, {"error": str(exc)})
        if self.registry is not None:
            unknown = await asyncio.to_thread(self._unregistered, split)
            if unknown:
                return _json_response(
                    409,
                    {
                        "error": f"model {split.model!r} has no version(s) {', '.join(unknown)} "
                        f"in the registry {self.registry.uri}"
                    },
                )
        async with self._lock:
            # Persist first: the split in memory is never ahead of the one on disk.
            await asyncio.to_thread(save_split, self.split_file, split)
            self.split = split  # one reference swap: every request sees old or new, never a mix
            self._publish_gauges(split)
        return _json_response(200, split.model_dump())

    def _unregistered(self, split: Split) -> list[str]:
        """The split's versions that the registry does not hold (blocking: run in a thread)."""
        from kubeloop.registry import VersionNotFound

        unknown = []
        for backend in (split.stable, split.canary):
            if backend is None:
                continue
            try:
                self.registry.get(split.model, backend.version)
            except VersionNotFound:
                unknown.append(backend.version)
        return unknown

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
            inputs = parsed.get("inputs")
            for tensor in inputs if isinstance(inputs, list) else ():
                if (
                    isinstance(tensor, dict)
                    and tensor.get("name") == self.entity
                    and isinstance(tensor.get("data"), list)
                    and tensor["data"]
                ):
                    return str(tensor["data"][0])
        return None

    async def _proxy(self, scope, method: str, path: str, body: bytes):
        split = self.split  # read once: the whole request uses one split
        if split is None:
            self._count_own(503)
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
        # Forwarded as the client sent it (raw, still percent-encoded): decoding and
        # re-encoding could turn an escaped "?" or "#" into a different request.
        raw_path = scope.get("raw_path") or path.encode()
        query = scope.get("query_string", b"")
        target = (raw_path + b"?" + query if query else raw_path).decode("latin-1")
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
        except ValueError as exc:  # yarl/aiohttp refuse the URL or a header: the request's fault
            status, resp_headers, data = _json_response(
                400, {"error": f"request cannot be forwarded as sent: {str(exc)[:200]}"}
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
        from yarl import URL

        session = self._session_get()
        url = URL(base + target, encoded=True)
        async with session.request(method, url, data=body or None, headers=headers) as resp:
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
    parser.add_argument(
        "--registry-uri",
        dest="registry_uri",
        default=None,
        help="model registry: a split naming a version it lacks is refused (default: no check)",
    )
    parser.add_argument(
        "--max-body-bytes",
        dest="max_body_bytes",
        type=int,
        default=PROXY_BODY_LIMIT,
        help=f"largest inference body forwarded; larger is a 413 (default {PROXY_BODY_LIMIT})",
    )
    args = parser.parse_args(argv)
    if args.max_body_bytes < 1:
        parser.error(f"--max-body-bytes must be positive, got {args.max_body_bytes}")
    router = Router(
        args.split_file,
        logger_url=args.logger_url,
        entity=args.entity,
        namespace=args.namespace,
        registry_uri=args.registry_uri,
        max_body_bytes=args.max_body_bytes,
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
