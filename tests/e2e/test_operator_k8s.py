"""The operator on a real cluster with KServe and KFP (skipped without one).

Needs: a kube context whose cluster has KServe (serving.kserve.io) and KFP, a registry
holding at least one version of the model (``KUBELOOP_E2E_REGISTRY_URI``, e.g.
s3://kubeloop-registry/models, with credentials in the usual AWS_* variables), and
``KUBELOOP_OPERATOR_KFP_HOST`` / ``KUBELOOP_OPERATOR_PROMETHEUS_URL`` reachable from here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
from kubeloop.operators.crd import GROUP, PLURAL, VERSION
from kubeloop.operators.crd_manifest import crd_manifest

pytestmark = pytest.mark.k8s


def _cluster():
    try:
        from kubernetes import client, config

        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        groups = {g.name for g in client.ApisApi().get_api_versions().groups}
    except Exception as exc:  # no kubeconfig, no cluster, or no access
        pytest.skip(f"no Kubernetes cluster: {exc}")
    if "serving.kserve.io" not in groups:
        pytest.skip("the cluster has no KServe (serving.kserve.io)")
    if not os.environ.get("KUBELOOP_E2E_REGISTRY_URI"):
        pytest.skip("KUBELOOP_E2E_REGISTRY_URI is not set")
    return client


def wait_for(what, predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}")


def test_model_deployment_creates_inference_service_and_reports_status():
    client = _cluster()
    ext, custom = client.ApiextensionsV1Api(), client.CustomObjectsApi()
    core = client.CoreV1Api()
    try:
        ext.create_custom_resource_definition(crd_manifest())
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    namespace = f"kubeloop-e2e-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace}})
    # The predictors' storage ServiceAccount (the chart's, in every namespace it serves):
    # without it the operator deploys nothing (StorageNotConfigured).
    core.create_namespaced_service_account(
        namespace,
        {"metadata": {"name": "kubeloop-s3"}, "secrets": [{"name": "kubeloop-s3-credentials"}]},
    )
    operator = subprocess.Popen(
        [sys.executable, "-m", "kubeloop.operators.cluster"],
        env={
            **os.environ,
            "KUBELOOP_OPERATOR_NAMESPACES": json.dumps([namespace]),
            "KUBELOOP_OPERATOR_METRICS_PORT": "0",
            # Leader election: this process is the one candidate, its Lease in the namespace.
            "POD_NAME": "e2e-operator",
            "POD_NAMESPACE": namespace,
        },
    )
    try:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelDeployment",
            "metadata": {"name": "fraud-detector"},
            "spec": {
                "model": {
                    "name": "fraud-detector",
                    "registryUri": os.environ["KUBELOOP_E2E_REGISTRY_URI"],
                },
                "retraining": {"enabled": False},
            },
        }
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        status = wait_for(
            "status.stableVersion",
            lambda: (
                custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, "fraud-detector"
                )
                .get("status", {})
                .get("stableVersion")
            ),
            180,
        )
        isvc = custom.get_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", namespace, "inferenceservices", "fraud-detector"
        )
        assert isvc["spec"]["predictor"]["model"]["storageUri"].endswith(f"/versions/{status}")
        events = core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=fraud-detector"
        )
        assert any(e.reason == "FirstDeployment" for e in events.items)
        # Only the leader reconciles: the operator holds the Lease it created.
        lease = client.CoordinationV1Api().read_namespaced_lease("kubeloop-operator", namespace)
        assert lease.spec.holder_identity == "e2e-operator"
        assert isvc["spec"]["predictor"]["serviceAccountName"] == "kubeloop-s3"
    finally:
        operator.terminate()
        operator.wait(30)
        core.delete_namespace(namespace)
