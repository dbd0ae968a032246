"""The registry bucket preflight (``kubeloop registry ensure-bucket``, the chart's bucket
Job) against a real S3 server: moto's, as its own process, with IAM authentication on and
buckets private to their account, so wrong credentials, a bucket owned by another account
and a user without permissions answer as AWS answers them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from minio import Minio

from kubeloop.local.ports import free_port
from kubeloop.local.wait import wait_until
from kubeloop.registry.bucket import BucketError, ensure_bucket
from kubeloop.settings import S3Settings

pytestmark = pytest.mark.slow
OTHER_ACCOUNT = "111111111111"
ALLOW_S3 = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
# On AWS another account's bucket is closed to us unless its owner grants access; moto
# checks only the caller's own policy, so ours closes it (all but CreateBucket, whose
# answer is what the preflight reads).
NOT_THEIRS = {
    "Effect": "Deny",
    "NotAction": "s3:CreateBucket",
    "Resource": ["arn:aws:s3:::taken", "arn:aws:s3:::taken/*"],
}


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    def listening() -> bool:
        assert proc.poll() is None, f"moto server exited: {proc.stderr.read().decode()[-2000:]}"
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, timeout=timeout, what="moto server listening", interval=0.1)


@pytest.fixture(scope="module")
def s3():
    """moto's server with authentication after the 8 set-up calls below: ``kubeloop``
    (allowed s3:*, but not on another account's bucket), ``other`` in another account
    (allowed s3:*, owns bucket ``taken``) and ``nobody`` (no policy). Yields the endpoint
    and each user's settings."""
    import boto3

    port = free_port()
    env = {
        **os.environ,
        "INITIAL_NO_AUTH_ACTION_COUNT": "8",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_port(port, proc)
        endpoint = f"127.0.0.1:{port}"

        def user(name: str, account: str | None = None, policy: tuple = ()) -> S3Settings:
            iam = boto3.client(
                "iam",
                endpoint_url=f"http://{endpoint}",
                region_name="us-east-1",
                aws_access_key_id="setup",
                aws_secret_access_key="setup",
            )
            if account:  # moto places the user (and its keys) in that account
                iam.meta.events.register(
                    "before-send.iam.*",
                    lambda request, **_: request.headers.__setitem__("x-moto-account-id", account),
                )
            iam.create_user(UserName=name)
            key = iam.create_access_key(UserName=name)["AccessKey"]
            if policy:
                document = {"Version": "2012-10-17", "Statement": list(policy)}
                iam.put_user_policy(
                    UserName=name, PolicyName="s3", PolicyDocument=json.dumps(document)
                )
            return S3Settings(
                endpoint=endpoint,
                access_key=key["AccessKeyId"],
                secret_key=key["SecretAccessKey"],
                secure=False,
            )

        users = {
            "kubeloop": user("kubeloop", policy=(ALLOW_S3, NOT_THEIRS)),
            "other": user("other", OTHER_ACCOUNT, policy=(ALLOW_S3,)),
            "nobody": user("nobody"),
        }
        other = users["other"]
        Minio(endpoint, other.access_key, other.secret_key, secure=False).make_bucket("taken")
        yield endpoint, users
    finally:
        proc.terminate()
        proc.wait(10)


def test_creates_a_missing_bucket_then_finds_it(s3):
    endpoint, users = s3
    assert ensure_bucket("kubeloop-registry", users["kubeloop"]) is True
    assert ensure_bucket("kubeloop-registry", users["kubeloop"]) is False
    me = users["kubeloop"]
    assert Minio(endpoint, me.access_key, me.secret_key, secure=False).bucket_exists(
        "kubeloop-registry"
    )


@pytest.mark.parametrize(
    ("bucket", "who", "says"),
    [
        ("kubeloop-registry", "wrong", "the endpoint rejected the credentials"),
        ("taken", "kubeloop", "the name belongs to another account"),
        ("not-allowed", "nobody", "access denied"),
        ("Not_A_Bucket", "kubeloop", "bucket name"),
    ],
)
def test_failures_name_the_endpoint_the_bucket_and_the_cause(s3, bucket, who, says):
    endpoint, users = s3
    settings = users.get(who) or S3Settings(
        endpoint=endpoint, access_key="AKIAWRONGWRONGWRONG1", secret_key="wrong", secure=False
    )
    with pytest.raises(BucketError) as caught:
        ensure_bucket(bucket, settings)
    message = str(caught.value)
    assert message.startswith(f"bucket {bucket!r} at http://{endpoint}: "), message
    assert says in message.lower() if says == "bucket name" else says in message, message


def test_an_unreachable_endpoint_fails_fast_and_says_so():
    endpoint = f"127.0.0.1:{free_port()}"
    settings = S3Settings(endpoint=endpoint, access_key="a", secret_key="b", secure=False)
    started = time.monotonic()
    with pytest.raises(
        BucketError, match=rf"bucket 'models' at http://{endpoint}: endpoint unreachable"
    ):
        ensure_bucket("models", settings)
    assert time.monotonic() - started < 30


def test_no_credentials_is_an_error_before_any_request():
    settings = S3Settings(endpoint=f"127.0.0.1:{free_port()}", secure=False)
    with pytest.raises(BucketError, match="no credentials"):
        ensure_bucket("models", settings.model_copy(update={"access_key": None}))


def test_the_cli_the_chart_runs(s3, tmp_path):
    """``kubeloop registry ensure-bucket`` as the bucket Job runs it: the bucket from
    KUBELOOP_REGISTRY_URI, the endpoint and credentials from the chart's environment."""
    endpoint, users = s3
    me = users["kubeloop"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KUBELOOP_", "AWS_"))} | {
        "KUBELOOP_HOME": str(tmp_path),
        "KUBELOOP_REGISTRY_URI": "s3://cli-registry/models",
        "KUBELOOP_S3__ENDPOINT": endpoint,
        "KUBELOOP_S3__SECURE": "false",
    }

    def run(access_key, secret_key):
        env = base | {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
        return subprocess.run(
            [sys.executable, "-m", "kubeloop.cli.main", "registry", "ensure-bucket"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    first = run(me.access_key, me.secret_key)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"created bucket 'cli-registry' at http://{endpoint}"
    again = run(me.access_key, me.secret_key)
    assert again.stdout.strip() == f"found bucket 'cli-registry' at http://{endpoint}"
    wrong = run("AKIAWRONGWRONGWRONG1", "wrong")
    assert wrong.returncode == 1
    assert f"error: bucket 'cli-registry' at http://{endpoint}: the endpoint rejected" in (
        wrong.stderr
    )
