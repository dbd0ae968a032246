"""KServe InferenceService manifests for a registry version, built with the kserve SDK.

The predictor is kubeloop's own container (``python -m kubeloop.serving.predictor``).
KServe's storage initializer downloads the version named by the ``STORAGE_URI``
environment variable (the custom-container form of ``storageUri``) into ``/mnt/models``
with the S3 credentials of the predictor's ServiceAccount; the predictor then verifies
every file against the version's ``MANIFEST.json`` before it reports ready.

Canary rollouts follow KServe's model: apply the InferenceService with the candidate
version and ``canaryTrafficPercent``; KServe keeps the last ready revision as stable.
The ``logger`` sends KServe-format CloudEvents of every request/response to the drift
service.
"""

from __future__ import annotations

from typing import Any

from kserve import (
    V1beta1InferenceService,
    V1beta1InferenceServiceSpec,
    V1beta1LoggerSpec,
    V1beta1ModelFormat,
    V1beta1ModelSpec,
    V1beta1PredictorSpec,
)
from kubernetes.client import (
    ApiClient,
    V1Capabilities,
    V1Container,
    V1ContainerPort,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1HTTPGetAction,
    V1ObjectMeta,
    V1Probe,
    V1ResourceRequirements,
    V1SecurityContext,
    V1ServiceAccount,
    V1Volume,
    V1VolumeMount,
)

from kubeloop.images import image
from kubeloop.settings import ClusterSettings

MODEL_MOUNT = "/mnt/models"
# The chart's names (kubeloop.settings.ClusterSettings defaults, one place for both).
CHART_NAMES = ClusterSettings()
DEFAULT_SERVICE_ACCOUNT = CHART_NAMES.storage_service_account
DEFAULT_SECRET = "kubeloop-s3-credentials"


def storage_uri(registry_uri: str, model: str, version: str) -> str:
    if not registry_uri.startswith("s3://"):
        raise ValueError(
            f"a cluster InferenceService needs an s3:// registry, got {registry_uri!r}"
        )
    if not version.startswith("v") or not version[1:].isdigit():
        raise ValueError(f"version must be v<N> (resolve aliases first), got {version!r}")
    return f"{registry_uri.rstrip('/')}/{model}/versions/{version}"


def _to_dict(obj: Any) -> dict[str, Any]:
    return ApiClient().sanitize_for_serialization(obj)


def inference_service(
    model: str,
    version: str,
    registry_uri: str,
    *,
    namespace: str = "kubeloop",
    canary_percent: int | None = None,
    logger_url: str | None = None,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    image_ref: str | None = None,
    cpu: str = "500m",
    memory: str = "1Gi",
    gpus: int = 0,
    min_replicas: int = 1,
    max_replicas: int = 3,
    max_batch: int = 256,
    runtime: str | None = None,
) -> dict[str, Any]:
    """The ``serving.kserve.io/v1beta1`` InferenceService serving ``model``/``version``.

    Its predictor runs as ``service_account`` (the chart's storage ServiceAccount by
    default), whose S3 annotations and Secret the storage initializer downloads with.

    By default the predictor is a custom container; with ``runtime`` (the chart installs
    the ClusterServingRuntime ``kubeloop-predictor``) it is a ``model`` of format
    ``kubeloop`` with a plain ``storageUri``, which is how the operator deploys.
    """
    if not service_account:
        raise ValueError("service_account must name the predictors' storage ServiceAccount")
    if canary_percent is not None and not 0 <= canary_percent <= 100:
        raise ValueError(f"canary_percent must be within 0..100, got {canary_percent}")
    if gpus < 0 or min_replicas < 0 or max_replicas < max(min_replicas, 1):
        raise ValueError(
            "gpus and min_replicas must be >= 0 and max_replicas >= max(min_replicas, 1)"
        )
    limits = {"cpu": cpu, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    container = V1Container(
        name="kserve-container",
        image=image_ref or image("predictor"),
        args=[
            "--model_name",
            model,
            "--model-dir",
            MODEL_MOUNT,
            "--http_port",
            "8080",
            "--grpc_port",
            "8081",
            "--bind_host",
            "0.0.0.0",
            "--max-batch",
            str(max_batch),
        ],
        env=[
            V1EnvVar(name="STORAGE_URI", value=storage_uri(registry_uri, model, version)),
            V1EnvVar(name="KUBELOOP_MODEL_VERSION", value=version),
            V1EnvVar(name="HOME", value="/tmp"),  # the root filesystem is read-only
        ],
        volume_mounts=[V1VolumeMount(name="tmp", mount_path="/tmp")],
        ports=[V1ContainerPort(container_port=8080, protocol="TCP")],
        resources=V1ResourceRequirements(requests={"cpu": cpu, "memory": memory}, limits=limits),
        readiness_probe=V1Probe(
            http_get=V1HTTPGetAction(path=f"/v1/models/{model}", port=8080), period_seconds=5
        ),
        security_context=V1SecurityContext(
            run_as_non_root=True,
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            capabilities=V1Capabilities(drop=["ALL"]),
        ),
    )
    common = {
        "service_account_name": service_account,
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "canary_traffic_percent": canary_percent,
        "logger": V1beta1LoggerSpec(mode="all", url=logger_url) if logger_url else None,
        "labels": {"kubeloop.io/model-version": version},
    }
    if runtime:
        model_spec = V1beta1ModelSpec(
            name="kserve-container",
            model_format=V1beta1ModelFormat(name="kubeloop", version="1"),
            runtime=runtime,
            storage_uri=storage_uri(registry_uri, model, version),
            resources=container.resources,
        )
        predictor = V1beta1PredictorSpec(model=model_spec, **common)
    else:
        predictor = V1beta1PredictorSpec(
            containers=[container],
            volumes=[V1Volume(name="tmp", empty_dir=V1EmptyDirVolumeSource())],
            **common,
        )
    isvc = V1beta1InferenceService(
        api_version="serving.kserve.io/v1beta1",
        kind="InferenceService",
        metadata=V1ObjectMeta(
            name=model,
            namespace=namespace,
            labels={
                "app.kubernetes.io/name": model,
                "app.kubernetes.io/part-of": "kubeloop",
                "app.kubernetes.io/component": "predictor",
                "kubeloop.io/model-version": version,
            },
            annotations={"serving.kserve.io/deploymentMode": "Serverless"},
        ),
        spec=V1beta1InferenceServiceSpec(predictor=predictor),
    )
    return _to_dict(isvc)


def s3_service_account(
    endpoint: str,
    *,
    namespace: str = "kubeloop",
    name: str = DEFAULT_SERVICE_ACCOUNT,
    secret: str = DEFAULT_SECRET,
    secure: bool = False,
    region: str | None = None,
) -> dict[str, Any]:
    """The ServiceAccount whose Secret KServe's storage initializer reads for ``s3://``.

    The Secret itself (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``) is created by
    the operator of the cluster, never written to a manifest; its S3 settings are the
    annotations KServe documents.
    """
    if not endpoint or "://" in endpoint:
        raise ValueError(f"endpoint must be host:port without a scheme, got {endpoint!r}")
    annotations = {
        "serving.kserve.io/s3-endpoint": endpoint,
        "serving.kserve.io/s3-usehttps": "1" if secure else "0",
        "serving.kserve.io/s3-verifyssl": "1" if secure else "0",
    }
    if region:
        annotations["serving.kserve.io/s3-region"] = region
    sa = V1ServiceAccount(
        api_version="v1",
        kind="ServiceAccount",
        metadata=V1ObjectMeta(name=name, namespace=namespace, annotations=annotations),
        secrets=[{"name": secret}],
    )
    return _to_dict(sa)


def example_manifests() -> dict[str, str]:
    """Generated example manifests under ``manifests/serving/`` (see kubeloop.generated)."""
    import yaml

    from kubeloop.generated import GENERATED_HEADER

    header = GENERATED_HEADER.format(source="kubeloop.serving.inference_service") + "\n"
    registry = "s3://kubeloop-registry/models"
    drift = "http://kubeloop-drift.kubeloop.svc.cluster.local/"
    docs = {
        "manifests/serving/service-account.yaml": s3_service_account(CHART_NAMES.s3_endpoint),
        "manifests/serving/inferenceservice-stable.yaml": inference_service(
            "fraud-detector", "v1", registry, logger_url=drift
        ),
        "manifests/serving/inferenceservice-canary.yaml": inference_service(
            "fraud-detector", "v2", registry, canary_percent=10, logger_url=drift
        ),
        "manifests/serving/inferenceservice-runtime.yaml": inference_service(
            "fraud-detector",
            "v2",
            registry,
            canary_percent=10,
            logger_url=drift,
            runtime="kubeloop-predictor",
        ),
        "manifests/serving/inferenceservice-gpu.yaml": inference_service(
            "fraud-detector", "v1", registry, logger_url=drift, gpus=1, cpu="2", memory="4Gi"
        ),
    }
    return {path: header + yaml.safe_dump(doc, sort_keys=False) for path, doc in docs.items()}
