"""kubeloop's KServe predictor: a registry version behind V1, V2 (REST) and gRPC.

``load()`` downloads a version (or reads a folder the KServe storage initializer
filled), verifies every file against its manifest's sha256, and builds the schema
validator and the Feast online lookup. ``preprocess`` validates and enriches,
``predict`` runs the bundle, ``postprocess`` encodes the protocol's response, counts
metrics and queues payload events. Client mistakes raise :class:`RequestRejected`
(a kserve ``InvalidInput``, so a 400 with a JSON message).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput
from kserve.model import InferenceVerb

from kubeloop.model import ModelBundle
from kubeloop.registry import ChecksumMismatch, ModelRegistry, RegistryError
from kubeloop.registry.registry import MANIFEST, sha256_bytes, version_checksum
from kubeloop.serving import metrics as m
from kubeloop.serving.forward import Forward
from kubeloop.serving.inputs import InputValidator, Limits, RequestRejected, payload_limit_for
from kubeloop.serving.payload import EventContext, PayloadLogger
from kubeloop.serving.rest import CURRENT, Outcome


def verify_folder(folder: Path) -> dict[str, Any]:
    """Checks every file of a downloaded version against ``MANIFEST.json``; returns it."""
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise ChecksumMismatch(f"{folder} has no {MANIFEST}; not a registry version")
    manifest = json.loads(manifest_path.read_text())
    for name, meta in manifest["files"].items():
        path = folder / name
        if not path.exists() or sha256_bytes(path.read_bytes()) != meta["sha256"]:
            raise ChecksumMismatch(f"{folder}/{name} is missing or does not match its sha256")
    if version_checksum(manifest["files"]) != manifest["checksum"]:
        raise ChecksumMismatch(f"{folder}: version checksum does not match the manifest")
    return manifest


def parse_version_uri(uri: str) -> tuple[str, str, str]:
    """``<registry>/<model>/versions/<version>`` -> (registry URI, model, version)."""
    parts = uri.rstrip("/").rsplit("/", 3)
    if len(parts) != 4 or parts[2] != "versions" or not parts[1] or not parts[3]:
        raise RegistryError(
            f"{uri!r} is not a registry version URI (<registry>/<model>/versions/<version>)"
        )
    return parts[0], parts[1], parts[3]


@dataclass
class PredictorConfig:
    model_name: str
    version: str = "champion"
    registry_uri: str | None = None
    model_dir: str | None = None  # a folder already holding the version (KServe storageUri)
    feast_repo: str | None = None
    logger_url: str | None = None
    logger_queue_size: int = 2048
    logger_timeout_s: float = 2.0
    endpoint: str = "default"
    namespace: str = "default"
    limits: Limits = Limits()


@dataclass
class _Prepared:
    v2: bool
    request_id: str
    instances: list[dict[str, Any]]


class FraudPredictor(Model):
    """A ``kserve.Model`` serving one immutable registry version."""

    def __init__(self, config: PredictorConfig) -> None:
        super().__init__(config.model_name, return_response_headers=True)
        self.config = config
        self.version = ""
        self.bundle: ModelBundle | None = None
        self.validator: InputValidator | None = None
        self.features = None
        self.payload = (
            PayloadLogger(
                config.logger_url,
                queue_size=config.logger_queue_size,
                timeout_s=config.logger_timeout_s,
            )
            if config.logger_url
            else None
        )
        self._cache: tempfile.TemporaryDirectory | None = None
        self._id_prefix = secrets.token_hex(8)
        self._ids = itertools.count(1)

    # --- loading -----------------------------------------------------------------------
    def load(self) -> bool:
        """Fetches and verifies the version; raises ``RegistryError`` (ready stays False)."""
        cfg = self.config
        self.ready = False
        if cfg.model_dir and not cfg.model_dir.startswith("s3://"):
            folder = Path(cfg.model_dir)
        else:
            if cfg.model_dir:  # a version's own URI, as in an InferenceService storageUri
                registry_uri, model, version = parse_version_uri(cfg.model_dir)
            else:
                registry_uri, model, version = cfg.registry_uri, cfg.model_name, cfg.version
            if self._cache is not None:
                self._cache.cleanup()
            self._cache = tempfile.TemporaryDirectory(prefix=f"kubeloop-{cfg.model_name}-")
            try:
                registry = ModelRegistry(registry_uri)
                _, folder = registry.download(model, version, self._cache.name)
            except Exception:
                self._cache.cleanup()
                self._cache = None
                raise
        manifest = verify_folder(folder)
        self.version = manifest["version"]
        self.bundle = ModelBundle.load(folder)
        schema = self.bundle.schema
        self.validator = InputValidator(schema, cfg.limits)
        if cfg.feast_repo:
            from kubeloop.serving.features import OnlineFeatureLookup

            self.features = OnlineFeatureLookup(cfg.feast_repo, schema)
        self.forward = Forward(self.bundle)
        # Metrics and payload events name the registry's model (what the operator and the
        # drift service key on), not the served name: on a cluster that is the
        # InferenceService's, which is the ModelDeployment's.
        name, v = manifest.get("model") or cfg.model_name, self.version
        self._ok = m.INFERENCE_REQUESTS.labels(name, v, "ok")
        self._client_error = m.INFERENCE_REQUESTS.labels(name, v, "client_error")
        self._server_error = m.INFERENCE_REQUESTS.labels(name, v, "server_error")
        self._duration = m.INFERENCE_DURATION.labels(name, v)
        self._score = m.PREDICTION_SCORE.labels(name, v)
        self._classes = {c: m.PREDICTIONS.labels(name, v, str(c)) for c in (0, 1)}
        self._feast = m.FEAST_LOOKUP.labels(name)
        self._event_ctx = EventContext(
            model=name,
            version=v,
            endpoint=cfg.endpoint,
            namespace=cfg.namespace,
            source=f"kubeloop/{name}/{v}",
        )
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict[str, Any]]:
        return self.validator.v2_metadata_inputs() if self.validator else []

    def get_output_types(self) -> list[dict[str, Any]]:
        return [
            {
                "name": "score",
                "datatype": "FP64",
                "shape": [-1],
                "parameters": {"version": self.version},
            },
            {
                "name": "label",
                "datatype": "INT64",
                "shape": [-1],
                "parameters": {"version": self.version},
            },
        ]

    def count_http(self, status: int, outcome: Outcome) -> None:
        """Counts one REST inference request by its status, whoever answered it."""
        if status < 400:
            self._ok.inc()
        elif status < 500:
            self._client_error.inc()
            if outcome.reason and not outcome.counted:
                m.REQUEST_ERRORS.labels(self.name, self.version, outcome.reason).inc()
        else:
            self._server_error.inc()

    def _rejected(self, reason: str) -> None:
        m.REQUEST_ERRORS.labels(self.name, self.version, reason).inc()
        outcome = CURRENT.get()
        if outcome is None:  # gRPC: no REST edge counts the request
            self._client_error.inc()
        else:
            outcome.reason, outcome.counted = reason, True

    # --- the request path ---------------------------------------------------------------
    async def __call__(self, body, headers=None, verb=InferenceVerb.PREDICT):
        start = time.perf_counter()
        try:
            result = await super().__call__(body, headers, verb)
        except RequestRejected as exc:
            self._rejected(exc.kind)
            raise
        except InvalidInput:
            self._rejected("malformed_body")
            raise
        except Exception:
            if CURRENT.get() is None:
                self._server_error.inc()
            raise
        if CURRENT.get() is None:
            self._ok.inc()
        self._duration.observe(time.perf_counter() - start)
        return result

    async def preprocess(self, payload, headers=None) -> _Prepared:
        request_id = headers.get("x-request-id") if headers else None
        if isinstance(payload, InferRequest):
            if not request_id and payload.id:
                request_id = _checked_id(payload.id, self.config.limits.max_request_id_chars)
            inputs = [_v2_input(i) for i in payload.inputs]
            v2 = True
            rows = max((len(t[3]) for t in inputs), default=0)
        else:
            v2 = False
            instances = payload.get("instances") if isinstance(payload, dict) else None
            rows = len(instances) if isinstance(instances, list) else 0
        if rows >= self.config.limits.thread_rows:
            # A large batch is validated off the event loop, so health probes still answer.
            validated = await asyncio.to_thread(self._validate, payload, inputs if v2 else None)
        else:
            validated = self._validate(payload, inputs if v2 else None)
        if validated.needs_lookup:
            if self.features is None:
                raise RequestRejected(
                    "missing_field",
                    "this predictor has no online store configured; send every feature-view feature",
                )
            start = time.perf_counter()
            # A local file (SQLite) is read on the event loop, cheaper than a hop to a worker
            # thread; a network store (Redis) and large batches are read off the loop.
            if self.features.online.local and rows < self.config.limits.thread_rows:
                self.features.enrich(validated.instances, validated.needs_lookup)
            else:
                await asyncio.to_thread(
                    self.features.enrich, validated.instances, validated.needs_lookup
                )
            self._feast.observe(time.perf_counter() - start)
        return _Prepared(
            v2=v2, request_id=request_id or self._new_id(), instances=validated.instances
        )

    def _validate(self, payload, v2_inputs):
        if v2_inputs is not None:
            return self.validator.validate_instances(self.validator.v2_instances(v2_inputs))
        return self.validator.validate_v1(payload)

    def _new_id(self) -> str:
        # Unique per process (random prefix) and cheaper than a uuid4 per request.
        return f"{self._id_prefix}-{next(self._ids):08x}"

    async def predict(self, payload: _Prepared, headers=None, response_headers=None):
        if len(payload.instances) >= self.config.limits.thread_rows:
            scores, classes = await asyncio.to_thread(self.forward.predict, payload.instances)
        else:
            scores, classes = self.forward.predict(payload.instances)
        return payload, scores, classes

    def postprocess(self, result, headers=None, response_headers=None):
        prepared, scores, classes = result
        score_list, class_list = scores.tolist(), classes.tolist()
        n_pos = sum(class_list)
        if n_pos:
            self._classes[1].inc(n_pos)
        if len(class_list) - n_pos:
            self._classes[0].inc(len(class_list) - n_pos)
        observe = self._score.observe
        for s in score_list:
            observe(s)
        v1 = {
            "predictions": [
                {"score": s, "label": c} for s, c in zip(score_list, class_list, strict=True)
            ],
            "model_version": self.version,
        }
        if response_headers is not None:
            response_headers["x-request-id"] = prepared.request_id
            response_headers["x-kubeloop-version"] = self.version
        if self.payload is not None:
            self.payload.log(
                self._event_ctx, prepared.request_id, {"instances": prepared.instances}, v1
            )
        if not prepared.v2:
            return v1
        return InferResponse(
            response_id=prepared.request_id,
            model_name=self.name,
            model_version=self.version,
            infer_outputs=[
                InferOutput("score", [len(scores)], "FP64", np.asarray(scores, dtype=np.float64)),
                InferOutput("label", [len(classes)], "INT64", np.asarray(classes, dtype=np.int64)),
            ],
            parameters={"model_version": self.version},
        )


def _checked_id(value: Any, max_chars: int) -> str:
    """A V2 body's ``id``: it becomes a header (``Ce-Id``), so printable ASCII only."""
    text = str(value)
    if len(text) > max_chars or not (text.isascii() and text.isprintable()):
        raise RequestRejected(
            "malformed_body",
            f"request 'id' must be 1 to {max_chars} printable ASCII characters",
        )
    return text


def _v2_input(inp) -> tuple[str, str, list[int], Any]:
    if getattr(inp, "_raw_data", None) is not None:
        try:
            values = inp.as_numpy().reshape(-1).tolist()
        except Exception as exc:  # noqa: BLE001 - raw bytes that do not decode are a client mistake
            raise RequestRejected(
                "malformed_body", f"input {inp.name!r}: cannot decode raw data: {exc}"
            ) from None
    else:
        values = inp.data if isinstance(inp.data, list) else list(inp.data or [])
    return str(inp.name), str(inp.datatype), [int(d) for d in inp.shape], values


def predictor_limits(args) -> Limits:
    """The request limits from the command line; the body limit follows ``--max-batch``."""
    return Limits(
        max_batch=args.max_batch,
        max_payload_bytes=payload_limit_for(args.max_batch, args.max_payload_bytes),
        max_request_id_chars=args.max_request_id_chars,
        body_timeout_s=args.body_timeout,
    )


def main(argv: list[str] | None = None) -> None:
    from kubeloop.serving.server import (
        BoundModelServer,
        install_guard,
        kserve_options,
        predictor_parser,
    )

    args = predictor_parser().parse_args(argv)
    limits = predictor_limits(args)
    model = FraudPredictor(
        PredictorConfig(
            model_name=args.model_name,
            version=args.version,
            registry_uri=args.registry_uri,
            model_dir=args.model_dir,
            feast_repo=args.feast_repo,
            logger_url=args.logger_url,
            logger_queue_size=args.logger_queue_size,
            logger_timeout_s=args.logger_timeout,
            endpoint=args.endpoint,
            namespace=args.namespace,
            limits=limits,
        )
    )
    try:
        model.load()
    except RegistryError as exc:  # a missing, unreachable or tampered version
        raise SystemExit(
            f"kubeloop predictor {args.model_name}: cannot load the model: {exc}"
        ) from None
    install_guard(model, limits, on_outcome=model.count_http)
    BoundModelServer(
        **kserve_options(args),
        bind_host=args.bind_host,
        grpc_kwargs=vars(args),
        enable_latency_logging=False,
    ).start([model])


if __name__ == "__main__":
    main()
