"""kserve ModelServer wiring: bind address, the REST edge, and a command line.

kserve's REST and gRPC servers listen on every interface; locally kubeloop binds them
to ``--bind_host`` (127.0.0.1 by default; the container image passes 0.0.0.0). The REST
edge (:class:`kubeloop.serving.rest.RequestGuard`: body size and time limits, header,
media-type and V2 body checks, version routes, outcome counting) runs as ASGI
middleware before kserve decodes anything.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

from fastapi.exceptions import FastAPIDeprecationWarning, RequestValidationError
from kserve import ModelServer
from kserve.model_server import FASTAPI_APP_IMPORT_STRING
from kserve.model_server import app as kserve_app
from kserve.model_server import parser as kserve_parser
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.server import RESTServer
from starlette.exceptions import HTTPException as StarletteHTTPException

from kubeloop.serving.heap import freeze_startup_heap
from kubeloop.serving.inputs import Limits
from kubeloop.serving.rest import (
    Outcome,
    RequestGuard,
    http_error_handler,
    validation_error_handler,
)


class _MetadataServicer(InferenceServicer):
    """kserve's servicer, with model metadata the gRPC message can hold.

    The REST metadata's tensors carry ``parameters`` (an input's source, range and
    categories); the protocol's ``TensorMetadata`` message has no such field, so
    kserve's own ``ModelMetadata`` fails with INTERNAL. Here they are left out.
    """

    async def ModelMetadata(self, request, context):
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

        metadata = await self._data_plane.model_metadata(model_name=request.name)
        model = self._data_plane.model_registry.get_model(request.name)

        def tensors(items):
            return [
                pb.ModelMetadataResponse.TensorMetadata(
                    name=t["name"], datatype=t["datatype"], shape=t["shape"]
                )
                for t in items
            ]

        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=[version] if (version := getattr(model, "version", "")) else [],
            platform=metadata["platform"],
            inputs=tensors(metadata["inputs"]),
            outputs=tensors(metadata["outputs"]),
        )


class _BoundGRPCServer(GRPCServer):
    """kserve's gRPC server listening on one host instead of ``[::]``."""

    def __init__(self, *args, host: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._host = host

    async def start(self, max_workers):
        from concurrent import futures

        from grpc import aio
        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
        from kserve.protocol.grpc.interceptors import (
            ExceptionToStatusInterceptor,
            LoggingInterceptor,
        )

        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
            options=[
                (option, self._kwargs[key])
                for option, key in (
                    ("grpc.max_send_message_length", "grpc_max_send_message_length"),
                    ("grpc.max_receive_message_length", "grpc_max_receive_message_length"),
                )
                if self._kwargs.get(key) is not None  # else gRPC's own default
            ],
        )
        servicer = _MetadataServicer(self._data_plane, self._model_repository_extension)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        self._server.add_insecure_port(f"{self._host}:{self._port}")
        await self._server.start()
        await self._server.wait_for_termination()


class BoundModelServer(ModelServer):
    """A kserve ModelServer whose REST and gRPC servers bind to ``bind_host``."""

    def __init__(
        self, *args, bind_host: str = "127.0.0.1", grpc_kwargs: dict | None = None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.bind_host = bind_host
        self.grpc_kwargs = grpc_kwargs or {}

    def start(self, models) -> None:
        import asyncio

        # fastapi deprecates the ORJSONResponse kserve answers with; its warning would be
        # formatted and written on every request (the warning registry keeps being reset).
        warnings.filterwarnings("ignore", category=FastAPIDeprecationWarning)
        self._register_and_check_atleast_one_model_is_ready(models)
        freeze_startup_heap()
        self._rest_server = RESTServer(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            access_log_format=self.access_log_format,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
        )
        self._rest_server.config.host = self.bind_host
        self.servers.append(self._rest_server.start())
        if self.enable_grpc:
            self._grpc_server = _BoundGRPCServer(
                self.grpc_port,
                self.dataplane,
                self.model_repository_extension,
                kwargs=self.grpc_kwargs,
                grace_period=self.grace_period,
                host=self.bind_host,
            )
            self.servers.append(self._grpc_server.start(self.max_threads))
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())


def install_guard(
    model,
    limits: Limits,
    on_outcome: Callable[[int, Outcome], None] | None = None,
) -> None:
    """Installs the REST edge on kserve's FastAPI app (before the server starts), for the
    loaded kserve ``model``: the guard answers its V1 predict route itself."""
    kserve_app.add_middleware(
        RequestGuard,
        model_name=model.name,
        version=model.version,
        limits=limits,
        on_outcome=on_outcome,
        model=model,
        exception_handlers=kserve_app.exception_handlers,
    )
    kserve_app.add_exception_handler(RequestValidationError, validation_error_handler)
    kserve_app.add_exception_handler(StarletteHTTPException, http_error_handler)


# kserve's ModelServer takes these from the command line it parsed at import
# (``kserve.model_server.args``), as its arguments' defaults
SERVER_FLAGS = ("http_port", "grpc_port", "workers", "max_threads", "max_asyncio_workers",
                "enable_grpc", "enable_docs_url", "access_log_format", "event_loop",
                "timeout_keep_alive", "ssl_certfile", "ssl_keyfile")  # fmt: skip


def kserve_options(args: argparse.Namespace) -> dict:
    """kserve's server options from ``args`` (parsed by :func:`predictor_parser`), passed
    explicitly, and ``args`` made kserve's module-level flags (it reads logging's there).

    kserve parses ``sys.argv`` once, when ``kserve.model_server`` is imported. A predictor
    forked from the warm server (:mod:`kubeloop.local.stages`) imported kserve in that
    server, under the server's own command line, so both would otherwise be its."""
    import kserve.model_server

    kserve.model_server.args = args
    return {name: getattr(args, name) for name in SERVER_FLAGS}


def predictor_parser() -> argparse.ArgumentParser:
    """kserve's own argument parser, extended with kubeloop's flags."""
    parser = argparse.ArgumentParser(
        prog="python -m kubeloop.serving.predictor",
        parents=[kserve_parser],
        description="Serve one kubeloop registry version with kserve (V1, V2 REST and gRPC).",
    )
    parser.add_argument("--version", default="champion", help="registry version, alias or 'latest'")
    parser.add_argument(
        "--registry-uri", dest="registry_uri", default=None, help="local path or s3://bucket/prefix"
    )
    parser.add_argument(
        "--model-dir",
        "--model_dir",
        dest="model_dir",
        default=None,
        help="a folder already holding the version (e.g. /mnt/models filled from storageUri), "
        "or the version's own URI (s3://bucket/prefix/<model>/versions/<v>)",
    )
    parser.add_argument(
        "--feast-repo", dest="feast_repo", default=None, help="Feast repo for entity-key requests"
    )
    parser.add_argument(
        "--logger-url", dest="logger_url", default=None, help="CloudEvents payload receiver"
    )
    parser.add_argument(
        "--logger-queue-size",
        dest="logger_queue_size",
        type=int,
        default=2048,
        help="event pairs held before dropping",
    )
    parser.add_argument(
        "--logger-timeout", dest="logger_timeout", type=float, default=2.0, help="seconds per send"
    )
    parser.add_argument(
        "--endpoint", default="default", choices=["default", "canary"], help="Ce-Endpoint value"
    )
    parser.add_argument("--namespace", default="default", help="Ce-Namespace value")
    parser.add_argument(
        "--max-batch", dest="max_batch", type=int, default=256, help="most instances per request"
    )
    parser.add_argument(
        "--max-payload-bytes",
        dest="max_payload_bytes",
        type=int,
        default=None,
        help="largest request body (default: 1 MiB, or 1 KiB per --max-batch row if more)",
    )
    parser.add_argument(
        "--body-timeout",
        dest="body_timeout",
        type=float,
        default=Limits.body_timeout_s,
        help="seconds for a request body to arrive whole (else 408)",
    )
    parser.add_argument(
        "--max-request-id-chars",
        dest="max_request_id_chars",
        type=int,
        default=Limits.max_request_id_chars,
        help="longest X-Request-Id (or V2 body id) accepted",
    )
    parser.add_argument(
        "--bind_host", "--bind-host", dest="bind_host", default="127.0.0.1", help="listen address"
    )
    return parser
