"""Object stores under the model registry: a local directory, or S3-compatible storage.

Both expose the same small key/value surface over ``/``-separated keys, so the
registry has one layout and one publishing protocol for both.
"""

from __future__ import annotations

import io
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse


class RegistryError(RuntimeError):
    """A registry location cannot be read or written; the message says which and why."""


class ObjectStore(Protocol):
    uri: str

    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> Iterator[str]: ...
    def delete_prefix(self, prefix: str) -> None: ...


class LocalStore:
    """A directory. Writes go through a temporary file and ``os.replace`` (atomic)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents and path != self.root:
            raise RegistryError(f"key {key!r} escapes the registry root")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise RegistryError(f"cannot write {path}: {exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as exc:
            raise RegistryError(f"cannot read {self._path(key)}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.endswith(".tmp"):
                yield path.relative_to(self.root).as_posix()

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


class S3Store:
    """An S3 bucket and prefix through the ``minio`` client (MinIO, AWS S3, Ceph...)."""

    def __init__(
        self,
        uri: str,
        endpoint: str,
        access_key: str | None,
        secret_key: str | None,
        secure: bool = False,
        region: str | None = None,
        client: object | None = None,
    ) -> None:

        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise RegistryError(f"not an s3://bucket/prefix URI: {uri!r}")
        self.uri = uri.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.endpoint = endpoint
        self.client = client or minio_client(endpoint, access_key, secret_key, secure, region)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, fn, *args, **kwargs):
        from minio.error import MinioException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except (MinioException, HTTPError, OSError, ValueError) as exc:
            raise RegistryError(f"{what} at {self.uri} (endpoint {self.endpoint}): {exc}") from exc

    def put(self, key: str, data: bytes) -> None:
        self._call(
            f"cannot write {key}",
            self.client.put_object,
            self.bucket,
            self._key(key),
            io.BytesIO(data),
            len(data),
        )

    def get(self, key: str) -> bytes:
        resp = self._call(f"cannot read {key}", self.client.get_object, self.bucket, self._key(key))
        try:
            return self._call(f"cannot read {key}", resp.read)
        finally:
            resp.close()
            resp.release_conn()

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self._call(f"cannot stat {key}", self.client.stat_object, self.bucket, self._key(key))
            return True
        except RegistryError as exc:
            cause = exc.__cause__
            if isinstance(cause, S3Error) and cause.code in ("NoSuchKey", "NoSuchObject"):
                return False
            raise

    def list(self, prefix: str) -> Iterator[str]:
        objects = self._call(
            f"cannot list {prefix}",
            self.client.list_objects,
            self.bucket,
            prefix=self._key(prefix),
            recursive=True,
        )
        strip = len(self.prefix) + 1 if self.prefix else 0
        for obj in self._call(f"cannot list {prefix}", list, objects):
            yield obj.object_name[strip:]

    def delete_prefix(self, prefix: str) -> None:
        for key in list(self.list(prefix)):
            self._call(
                f"cannot delete {key}", self.client.remove_object, self.bucket, self._key(key)
            )


def minio_client(
    endpoint: str,
    access_key: str | None,
    secret_key: str | None,
    secure: bool = False,
    region: str | None = None,
):
    """The S3 client kubeloop uses: MinIO's, with bounded timeouts and retries."""
    from minio import Minio

    return Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure,
                 region=region, http_client=_http_client())  # fmt: skip


def endpoint_url(s3: object) -> str:
    """``http(s)://host:port`` of an ``S3Settings``, as messages name it."""
    return f"{'https' if s3.secure else 'http'}://{s3.endpoint}"


def _http_client():
    """Bounded timeouts and retries, so an unreachable endpoint fails in seconds, named."""
    import certifi
    import urllib3

    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5.0, read=60.0),
        cert_reqs="CERT_REQUIRED",  # as minio's own client: SSL_CERT_FILE or certifi's CAs
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
        maxsize=10,
    )


def open_store(uri: str, s3: object | None = None) -> ObjectStore:
    """Opens a store from a registry URI: a local path, ``file://`` or ``s3://bucket/prefix``."""
    if uri.startswith("s3://"):
        if s3 is None:
            from kubeloop.settings import get_settings

            s3 = get_settings().s3
        return S3Store(
            uri,
            endpoint=s3.endpoint,
            access_key=s3.access_key,
            secret_key=s3.secret_key,
            secure=s3.secure,
            region=s3.region,
        )
    return LocalStore(uri.removeprefix("file://"))
