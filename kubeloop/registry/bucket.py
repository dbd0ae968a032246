"""The registry's bucket: created when it is missing, or an error that names the endpoint,
the bucket and what is wrong. The chart's bucket Job runs it (``kubeloop registry
ensure-bucket``) on every install and upgrade, against MinIO or an external S3 endpoint.

S3 answers a HEAD on a bucket with a bare status: 403 says neither whether the bucket
belongs to another account nor whether the credentials are wrong. The create that follows
answers with an error code that does, so a 403 is explained by that.
"""

from __future__ import annotations

from typing import Any

from kubeloop.registry.stores import RegistryError, endpoint_url, minio_client

# Error codes S3 (and MinIO) give for credentials it does not accept.
REJECTED_CREDENTIALS = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
)


class BucketError(RegistryError):
    """The registry bucket neither exists for these credentials nor could be created."""


def ensure_bucket(bucket: str, s3: Any = None, *, client: Any = None) -> bool:
    """Makes sure ``bucket`` exists at ``s3.endpoint`` (kubeloop's ``S3Settings``; default
    the settings' own) and these credentials reach it. Returns True when it created the
    bucket, False when it was there; raises ``BucketError`` saying why not."""
    from minio.error import S3Error
    from urllib3.exceptions import HTTPError

    if s3 is None:
        from kubeloop.settings import get_settings

        s3 = get_settings().s3
    where = f"bucket {bucket!r} at {endpoint_url(s3)}"
    if not s3.access_key or not s3.secret_key:
        raise BucketError(
            f"{where}: no credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
            "KUBELOOP_S3__ACCESS_KEY and KUBELOOP_S3__SECRET_KEY)"
        )
    try:
        client = client or minio_client(
            s3.endpoint, s3.access_key, s3.secret_key, s3.secure, s3.region
        )
        try:
            if client.bucket_exists(bucket):
                return False
        except S3Error as exc:
            if exc.code != "AccessDenied":
                raise
            # A bare 403: the create below tells whose bucket it is or what is wrong.
        try:
            client.make_bucket(bucket, location=s3.region)
        except S3Error as exc:
            if exc.code == "BucketAlreadyOwnedByYou":  # created meanwhile (another Job)
                return False
            raise
        return True
    except S3Error as exc:
        raise BucketError(f"{where}: {_explain(exc, s3)}") from exc
    except ValueError as exc:  # the client's own checks: the bucket name, the endpoint
        raise BucketError(f"{where}: {exc}") from exc
    except (HTTPError, OSError) as exc:
        tls = " (TLS: check registry.external.secure and registry.caBundle)" if s3.secure else ""
        raise BucketError(f"{where}: endpoint unreachable{tls}: {_root_cause(exc)}") from exc


def _explain(exc: Any, s3: Any) -> str:
    if exc.code in REJECTED_CREDENTIALS:
        return (
            f"the endpoint rejected the credentials (access key {s3.access_key!r}: {exc.code}); "
            "check the Secret's AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    if exc.code == "BucketAlreadyExists":
        return (
            "the name belongs to another account (S3 bucket names are global); choose "
            "another registry.bucket"
        )
    if exc.code == "AccessDenied":
        return (
            "access denied: these credentials may neither use the bucket nor create it; grant "
            "them s3:ListBucket, s3:GetObject and s3:PutObject on it, or create it beforehand"
        )
    return f"{exc.code}: {exc.message}"


def _root_cause(exc: BaseException) -> str:
    """urllib3 wraps the connection error in a retry error: name the innermost reason."""
    reason = getattr(exc, "reason", None)
    while isinstance(getattr(reason, "reason", None), BaseException):
        reason = reason.reason
    return str(reason or exc)
