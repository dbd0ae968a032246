"""A real S3 server for tests: moto's, in a thread, with the buckets a test needs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

ACCESS_KEY = "kubeloop"
SECRET_KEY = "kubeloop-secret"


@dataclass(frozen=True)
class MotoS3:
    endpoint: str  # host:port
    client: object  # a minio.Minio client with the test credentials

    @property
    def env(self) -> dict[str, str]:
        """The ``KUBELOOP_S3__*`` settings that reach it."""
        return {
            "KUBELOOP_S3__ENDPOINT": self.endpoint,
            "KUBELOOP_S3__ACCESS_KEY": ACCESS_KEY,
            "KUBELOOP_S3__SECRET_KEY": SECRET_KEY,
        }


@contextmanager
def moto_s3(*buckets: str) -> Iterator[MotoS3]:
    """Starts moto's S3 server on a free port, creates ``buckets`` and stops it on exit."""
    from minio import Minio
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"{host}:{port}"
        client = Minio(endpoint, ACCESS_KEY, SECRET_KEY, secure=False)
        for bucket in buckets:
            client.make_bucket(bucket)
        yield MotoS3(endpoint, client)
    finally:
        server.stop()
