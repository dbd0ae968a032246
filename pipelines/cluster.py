"""Where a compiled pipeline runs: the release's stage images and its S3 storage.

The stage pods read the registry through kubeloop's settings environment: the S3
endpoint, TLS and region come from a ConfigMap, the credentials from a Secret, both
named at compile time (kfp-kubernetes puts the references in the IR's platform spec).
The train task joins the release's RayCluster when one is named (``ray_address``). The
defaults are what the Helm chart creates for the release ``kubeloop``; the chart's
upload Job compiles with its own names (``KUBELOOP_IMAGE_REGISTRY`` and the other
variables of :meth:`PipelineCluster.from_env`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

from kubeloop.images import REGISTRY, TAG, image

# ConfigMap key → environment variable of the stage container; the keys are the
# variable names themselves (kubeloop.settings: KUBELOOP_S3__*, KUBELOOP_REGISTRY_URI).
STORAGE_CONFIG_KEYS: tuple[str, ...] = (
    "KUBELOOP_REGISTRY_URI",
    "KUBELOOP_S3__ENDPOINT",
    "KUBELOOP_S3__SECURE",
    "KUBELOOP_S3__REGION",
)
# The environment variables the credentials reach the stages as (S3Settings reads them).
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")

# Environment variable of each PipelineCluster field (read by from_env: the chart's upload Job).
# They carry names (of the Secret and of its fields), never credentials, and are named so.
ENV_VARS = {
    "image_registry": "KUBELOOP_IMAGE_REGISTRY",
    "image_tag": "KUBELOOP_IMAGE_TAG",
    "s3_secret": "KUBELOOP_PIPELINE_S3_CREDENTIALS",
    "s3_access_key_key": "KUBELOOP_PIPELINE_S3_CREDENTIALS_USER_FIELD",
    "s3_secret_key_key": "KUBELOOP_PIPELINE_S3_CREDENTIALS_PASSKEY_FIELD",
    "storage_config_map": "KUBELOOP_PIPELINE_STORAGE_CONFIG_MAP",
    "ray_address": "KUBELOOP_PIPELINE_RAY_ADDRESS",
}
# The train task's Ray address (kubeloop.settings ray_address).
RAY_ADDRESS_ENV = "KUBELOOP_RAY_ADDRESS"
# Ray Client to a cluster's head Service: ray://<host>:<port> (KubeRay's head serves 10001).
_RAY_CLIENT = re.compile(r"^ray://[a-z0-9]([-a-z0-9.]*[a-z0-9])?:[0-9]{1,5}$")

_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


@dataclass(frozen=True)
class PipelineCluster:
    """Compile-time settings of the training pipeline on a cluster."""

    image_registry: str = REGISTRY
    image_tag: str = TAG
    s3_secret: str = "kubeloop-minio"
    s3_access_key_key: str = "AWS_ACCESS_KEY_ID"
    s3_secret_key_key: str = "AWS_SECRET_ACCESS_KEY"
    storage_config_map: str = "kubeloop-storage"
    # The release's RayCluster (ray://<head service>:10001); empty: the train task runs Ray
    # in its own pod.
    ray_address: str = ""

    def __post_init__(self) -> None:
        image("ingest", self.image_registry, self.image_tag)  # raises on an unusable pair
        for name in ("s3_secret", "storage_config_map"):
            if not _K8S_NAME.match(getattr(self, name)):
                raise ValueError(
                    f"{name} must be a Kubernetes object name, got {getattr(self, name)!r}"
                )
        for name in ("s3_access_key_key", "s3_secret_key_key"):
            if not _SECRET_KEY.match(getattr(self, name)):
                raise ValueError(f"{name} must be a Secret data key, got {getattr(self, name)!r}")
        if self.ray_address and not _RAY_CLIENT.match(self.ray_address):
            raise ValueError(
                f"ray_address must be a Ray Client address ray://<host>:<port>, "
                f"got {self.ray_address!r}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PipelineCluster:
        """The settings from ``KUBELOOP_IMAGE_REGISTRY`` and friends; unset or empty
        variables keep the defaults."""
        environ = os.environ if environ is None else environ
        given = {f.name: environ.get(ENV_VARS[f.name], "") for f in fields(cls)}
        return cls(**{k: v for k, v in given.items() if v})

    def image(self, name: str) -> str:
        return image(name, self.image_registry, self.image_tag)

    def apply(self, task, stage: str):
        """Runs ``task`` on the release's image of ``stage`` with the storage environment;
        the train task also gets the RayCluster's address."""
        from kfp import kubernetes

        if stage == "train" and self.ray_address:
            task.set_env_variable(RAY_ADDRESS_ENV, self.ray_address)

        task.container_spec.image = self.image(stage)
        kubernetes.use_config_map_as_env(
            task, self.storage_config_map, {key: key for key in STORAGE_CONFIG_KEYS}
        )
        kubernetes.use_secret_as_env(
            task,
            self.s3_secret,
            dict(
                zip((self.s3_access_key_key, self.s3_secret_key_key), CREDENTIAL_ENV, strict=True)
            ),
        )
        return task
