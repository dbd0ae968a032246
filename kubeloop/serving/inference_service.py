"""KServe InferenceServices for a registry version, built with the kserve SDK: the one
builder for the operator's creates and patches, the example manifests and the tests.

The predictor is kubeloop's own container (``python -m kubeloop.serving.predictor``).
KServe's storage initializer downloads the version into ``/mnt/models`` with the S3
credentials of the predictor's ServiceAccount; the predictor then verifies every file
against the version's ``MANIFEST.json`` before it reports ready. With ``runtime`` (the
chart's ClusterServingRuntime ``kubeloop-predictor``, how the operator deploys) the
predictor is a ``model`` of format ``kubeloop`` with a plain ``storageUri``; without, a
custom container reads the ``STORAGE_URI`` environment variable.

Canary rollouts follow KServe's model: apply the InferenceService with the candidate
version and ``canaryTrafficPercent``; KServe keeps the last ready revision as stable, so
a patch back to the stable version at 100 % is also how a rollback lands.

Payload events come from the predictor itself (``--logger-url``), not from KServe's
``logger``: KServe's agent logs the request as the caller sent it, without the features
the predictor looks up in Feast and without the registry version (``Ce-Modelversion``)
the drift service files events under. With ``feast_config_map`` (the chart's Feast
ConfigMap, ``feature_store.yaml``) the predictor enriches entity-key requests from the
online store that file names.
"""

from __future__ import annotations

from typing import Any

from kserve import (
    V1beta1InferenceService,
    V1beta1InferenceServiceSpec,
    V1beta1ModelFormat,
    V1beta1ModelSpec,
    V1beta1PredictorSpec,
)
from kubernetes.client import (
    ApiClient,
    V1Capabilities,
    V1ConfigMapVolumeSource,
    V1Container,
    V1ContainerPort,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1HTTPGetAction,
    V1ObjectMeta,
    V1OwnerReference,
    V1Probe,
    V1ResourceRequirements,
    V1SecurityContext,
    V1ServiceAccount,
    V1Toleration,
    V1Volume,
    V1VolumeMount,
)

from kubeloop.images import image
from kubeloop.settings import ClusterSettings

ISVC_GROUP, ISVC_VERSION, ISVC_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
VERSION_LABEL = "kubeloop.io/model-version"
MODEL_MOUNT = "/mnt/models"
FEAST_MOUNT = "/etc/kubeloop/feast"  # the Feast ConfigMap: feature_store.yaml
FEAST_VOLUME = "feast-config"
# The predictor pod spec's node placement fields (wire names).
PLACEMENT_FIELDS = (
    "nodeSelector",
    "tolerations",
    "affinity",
    "runtimeClassName",
    "priorityClassName",
)
GPU_RESOURCE = "nvidia.com/gpu"  # the NVIDIA device plugin's extended resource
# The chart's ClusterServingRuntime and the model format it serves.
PREDICTOR_RUNTIME = "kubeloop-predictor"
# The chart's names (kubeloop.settings.ClusterSettings defaults, one place for both).
CHART_NAMES = ClusterSettings()
DEFAULT_SERVICE_ACCOUNT = CHART_NAMES.storage_service_account
DEFAULT_SECRET = "kubeloop-s3-credentials"


def storage_uri(registry_uri: str, model: str, version: str) -> str:
    if not version.startswith("v") or not version[1:].isdigit():
        raise ValueError(f"version must be v<N> (resolve aliases first), got {version!r}")
    return f"{registry_uri.rstrip('/')}/{model}/versions/{version}"


def _to_dict(obj: Any) -> dict[str, Any]:
    return ApiClient().sanitize_for_serialization(obj)


def predictor_spec(
    model: str,
    version: str,
    registry_uri: str,
    *,
    canary_percent: int | None = None,
    logger_url: str | None = None,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    image_ref: str | None = None,
    cpu: str | None = None,
    memory: str | None = None,
    gpus: int = 0,
    min_replicas: int = 1,
    max_replicas: int = 3,
    max_batch: int = 256,
    runtime: str | None = None,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    affinity: dict[str, Any] | None = None,
    runtime_class_name: str | None = None,
    priority_class_name: str | None = None,
    feast_config_map: str | None = None,
) -> V1beta1PredictorSpec:
    """The predictor serving ``model``/``version`` (see ``inference_service``).

    Compute: ``cpu`` and ``memory`` (requests equal limits) and ``gpus`` (``nvidia.com/gpu``).
    With ``runtime``, an unset one keeps the serving runtime container's value (KServe merges
    the two); the custom container defaults to 500m and 1Gi. Placement: ``node_selector``,
    ``tolerations`` and ``affinity`` (core/v1 wire format, camelCase, as in a pod spec),
    ``runtime_class_name`` and ``priority_class_name`` go on the predictor's pod spec.
    ``logger_url`` receives the predictor's payload events; ``feast_config_map`` names the
    ConfigMap whose ``feature_store.yaml`` the predictor enriches requests with.
    """
    if not service_account:
        raise ValueError("service_account must name the predictors' storage ServiceAccount")
    if canary_percent is not None and not 0 <= canary_percent <= 100:
        raise ValueError(f"canary_percent must be within 0..100, got {canary_percent}")
    if gpus < 0 or min_replicas < 0 or max_replicas < max(min_replicas, 1):
        raise ValueError(
            "gpus and min_replicas must be >= 0 and max_replicas >= max(min_replicas, 1)"
        )
    uri = storage_uri(registry_uri, model, version)
    if not runtime:
        cpu, memory = cpu or "500m", memory or "1Gi"
    limits = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    if gpus:
        limits[GPU_RESOURCE] = str(gpus)
    # Requests equal limits: a GPU must be requested as much as it is limited.
    resources = V1ResourceRequirements(requests=dict(limits), limits=limits) if limits else None
    common = {
        "service_account_name": service_account,
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "canary_traffic_percent": canary_percent,
        "labels": {VERSION_LABEL: version},
        "node_selector": node_selector or None,
        "tolerations": [_toleration(t) for t in tolerations] if tolerations else None,
        "affinity": affinity or None,
        "runtime_class_name": runtime_class_name,
        "priority_class_name": priority_class_name,
    }
    args = ["--logger-url", logger_url] if logger_url else []
    mounts, volumes = [], []
    if feast_config_map:
        args += ["--feast-repo", FEAST_MOUNT]
        mounts.append(V1VolumeMount(name=FEAST_VOLUME, mount_path=FEAST_MOUNT, read_only=True))
        volumes.append(
            V1Volume(name=FEAST_VOLUME, config_map=V1ConfigMapVolumeSource(name=feast_config_map))
        )
    if runtime:
        model_spec = V1beta1ModelSpec(
            name="kserve-container",  # KServe's own default; the SDK would send ""
            model_format=V1beta1ModelFormat(name="kubeloop", version="1"),
            runtime=runtime,
            storage_uri=uri,
            resources=resources,
            args=args or None,  # KServe appends them to the runtime's
            volume_mounts=mounts or None,
        )
        return V1beta1PredictorSpec(model=model_spec, volumes=volumes or None, **common)
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
            *args,
        ],  # fmt: skip
        env=[
            V1EnvVar(name="STORAGE_URI", value=uri),
            V1EnvVar(name="KUBELOOP_MODEL_VERSION", value=version),
            V1EnvVar(name="HOME", value="/tmp"),  # the root filesystem is read-only
        ],
        volume_mounts=[V1VolumeMount(name="tmp", mount_path="/tmp"), *mounts],
        ports=[V1ContainerPort(container_port=8080, protocol="TCP")],
        resources=resources,
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
    return V1beta1PredictorSpec(
        containers=[container],
        volumes=[V1Volume(name="tmp", empty_dir=V1EmptyDirVolumeSource()), *volumes],
        **common,
    )


def _toleration(wire: dict[str, Any]) -> V1Toleration:
    names = {camel: snake for snake, camel in V1Toleration.attribute_map.items()}
    unknown = set(wire) - set(names)
    if unknown:
        raise ValueError(f"tolerations: unknown fields {sorted(unknown)}")
    return V1Toleration(**{names[k]: v for k, v in wire.items()})


def inference_service(
    model: str,
    version: str,
    registry_uri: str,
    *,
    name: str | None = None,
    namespace: str = "kubeloop",
    owner: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    **predictor: Any,
) -> dict[str, Any]:
    """The ``serving.kserve.io/v1beta1`` InferenceService ``name`` (default: the model's
    name) serving ``model``/``version``, as a plain dict for the API or a manifest.

    Its predictor runs as ``service_account`` (the chart's storage ServiceAccount by
    default), whose S3 annotations and Secret the storage initializer downloads with;
    ``predictor`` takes ``predictor_spec``'s keywords. ``owner`` (``apiVersion``, ``kind``,
    ``name``, ``uid``) makes the InferenceService garbage-collected with its owner.
    """
    name = name or model
    metadata = V1ObjectMeta(
        name=name,
        namespace=namespace,
        # The version is the predictor's label: patches touch only the predictor.
        labels={
            "app.kubernetes.io/name": model,
            "app.kubernetes.io/part-of": "kubeloop",
            "app.kubernetes.io/component": "predictor",
            "app.kubernetes.io/managed-by": "kubeloop",
            "kubeloop.io/deployment": name,
        },
        annotations=annotations or None,
        owner_references=[V1OwnerReference(controller=True, **_snake(owner))] if owner else None,
    )
    isvc = V1beta1InferenceService(
        api_version=f"{ISVC_GROUP}/{ISVC_VERSION}",
        kind="InferenceService",
        metadata=metadata,
        spec=V1beta1InferenceServiceSpec(
            predictor=predictor_spec(model, version, registry_uri, **predictor)
        ),
    )
    return _to_dict(isvc)


def _snake(owner: dict[str, str]) -> dict[str, str]:
    return {"api_version": owner["apiVersion"], **{k: owner[k] for k in ("kind", "name", "uid")}}


def traffic_patch(
    model: str,
    registry_uri: str,
    stable: str,
    canary: str | None,
    canary_percent: int,
    **predictor: Any,
) -> dict[str, Any]:
    """A merge patch for the desired split: the canary's revision at ``canary_percent``, or
    the stable version at 100 % (which is also how a rollback lands)."""
    version, percent = (canary, canary_percent) if canary else (stable, 100)
    spec = _to_dict(
        predictor_spec(model, version, registry_uri, canary_percent=percent, **predictor)
    )
    # A placement the spec no longer sets is removed (null in a merge patch), and so is
    # KServe's logger, which InferenceServices of earlier kubeloop releases carried.
    return {"spec": {"predictor": {**dict.fromkeys((*PLACEMENT_FIELDS, "logger")), **spec}}}


def needs_patch(current: dict[str, Any], patch: dict[str, Any]) -> bool:
    """True when applying the merge patch would change ``current``."""

    def contains(have: Any, want: Any) -> bool:
        if isinstance(want, dict):
            return isinstance(have, dict) and all(contains(have.get(k), v) for k, v in want.items())
        return have == want

    return not contains(current, patch)


def ready_versions(isvc: dict[str, Any] | None, stable: str | None) -> frozenset[str]:
    """Versions serving once KServe reports the service Ready: the labelled (latest) revision,
    and the stable one, which keeps the rest of the traffic during a canary."""
    if not isvc:
        return frozenset()
    conditions = isvc.get("status", {}).get("conditions", [])
    if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
        return frozenset()
    latest = isvc.get("spec", {}).get("predictor", {}).get("labels", {}).get(VERSION_LABEL)
    return frozenset(v for v in (latest, stable) if v)


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
            runtime=PREDICTOR_RUNTIME,
        ),
        "manifests/serving/inferenceservice-gpu.yaml": inference_service(
            "fraud-detector",
            "v1",
            registry,
            logger_url=drift,
            gpus=1,
            cpu="2",
            memory="4Gi",
            node_selector={"nvidia.com/gpu.present": "true"},
            tolerations=[{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        ),
    }
    return {path: header + yaml.safe_dump(doc, sort_keys=False) for path, doc in docs.items()}
