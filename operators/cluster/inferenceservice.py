"""KServe InferenceService specs and patches for a ModelDeployment (pure builders)."""

from __future__ import annotations

from typing import Any

from kubeloop.operators.crd import API_VERSION, KIND, ModelDeploymentSpec

from kubeloop.settings import ClusterSettings

ISVC_GROUP, ISVC_VERSION, ISVC_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
VERSION_LABEL = "kubeloop.io/model-version"
# The chart's storage ServiceAccount (S3 annotations + registry Secret) for its default
# release; the operator is given its release's name through kubeloop.settings.
DEFAULT_SERVICE_ACCOUNT = ClusterSettings().storage_service_account


def storage_uri(registry_uri: str, model: str, version: str) -> str:
    return f"{registry_uri.rstrip('/')}/{model}/versions/{version}"


def predictor(
    spec: ModelDeploymentSpec,
    registry_uri: str,
    version: str,
    canary_percent: int | None,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
) -> dict[str, Any]:
    """The predictor block. KServe sends ``canaryTrafficPercent`` to the revision this creates
    and the rest to the last fully rolled-out one, so a canary is "new storage URI + percent".
    It runs as ``service_account``, whose S3 credentials the storage initializer uses to
    download ``storageUri``."""
    res = spec.serving.resources
    limits: dict[str, Any] = {"cpu": res.cpu, "memory": res.memory}
    if res.gpu:
        limits["nvidia.com/gpu"] = str(res.gpu)
    block: dict[str, Any] = {
        "serviceAccountName": service_account,
        "minReplicas": spec.serving.replicas,
        "maxReplicas": spec.serving.max_replicas,
        "labels": {VERSION_LABEL: version},
        "model": {
            "modelFormat": {"name": "kubeloop"},
            "runtime": "kubeloop-predictor",
            "storageUri": storage_uri(registry_uri, spec.model.name, version),
            "resources": {"requests": dict(limits), "limits": limits},
        },
    }
    if canary_percent is not None:
        block["canaryTrafficPercent"] = canary_percent
    if spec.serving.logger_url:
        block["logger"] = {"mode": "all", "url": spec.serving.logger_url}
    return block


def inference_service(
    name: str,
    namespace: str,
    uid: str,
    spec: ModelDeploymentSpec,
    registry_uri: str,
    version: str,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
) -> dict[str, Any]:
    return {
        "apiVersion": f"{ISVC_GROUP}/{ISVC_VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "kubeloop", "kubeloop.io/deployment": name},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": name,
                    "uid": uid,
                    "controller": True,
                }
            ],
        },
        "spec": {"predictor": predictor(spec, registry_uri, version, 100, service_account)},
    }


def traffic_patch(
    spec: ModelDeploymentSpec,
    registry_uri: str,
    stable: str,
    canary: str | None,
    canary_percent: int,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
) -> dict[str, Any]:
    """A merge patch for the desired split: the canary's revision at ``canary_percent``, or
    the stable version at 100 % (which is also how a rollback lands)."""
    version, percent = (canary, canary_percent) if canary else (stable, 100)
    return {"spec": {"predictor": predictor(spec, registry_uri, version, percent, service_account)}}


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
