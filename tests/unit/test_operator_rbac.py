"""The operator's RBAC as installed grants exactly what its code calls, and validates.

The chart is the one hand-written install source; ``manifests/base/kubeloop.yaml`` is
its rendering (``make manifests-base``), which these tests read, so they need no helm.
``test_rbac_chart.py`` derives the grants from the code and checks the chart's scenarios.
"""

from __future__ import annotations

import yaml

from kubeloop.generated import REPO_ROOT

BASE = REPO_ROOT / "manifests" / "base" / "kubeloop.yaml"
OPERATOR = "kubeloop-operator"
KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment"}


def docs() -> list[dict]:
    """The operator's ServiceAccount, roles, bindings and Deployment from the base."""
    return [
        d
        for d in yaml.safe_load_all(BASE.read_text())
        if d and d["kind"] in KINDS and d["metadata"]["name"].startswith(OPERATOR)
    ]


def one(kind: str) -> dict:
    (doc,) = [d for d in docs() if d["kind"] == kind]
    return doc


def test_manifests_validate_against_kubernetes_schemas():
    import kubernetes_validate

    assert {d["kind"] for d in docs()} == KINDS
    for doc in docs():
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_cluster_role_is_least_privilege():
    grants = {
        (g, r): set(rule["verbs"])
        for rule in one("ClusterRole")["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert grants == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
        ("kubeloop.io", "modeldeployments"): {"list", "watch", "patch"},
        ("kubeloop.io", "modeldeployments/status"): {"patch"},
        ("serving.kserve.io", "inferenceservices"): {"get", "create", "patch"},
        ("", "events"): {"create"},
    }
    assert not any("*" in v for verbs in grants.values() for v in verbs)


def test_bindings_give_the_roles_to_the_operator_service_account():
    account = one("ServiceAccount")["metadata"]
    for kind, role in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = one(kind)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role,
            "name": one(role)["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
        ]
    pod = one("Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["name"]


def test_lease_role_grants_exactly_the_elector_calls():
    role = one("Role")
    assert role["metadata"]["namespace"] == one("Deployment")["metadata"]["namespace"]
    grants = {
        (g, r, v, tuple(rule.get("resourceNames", ())))
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    lease = "kubeloop-operator"
    assert grants == {
        ("coordination.k8s.io", "leases", "create", ()),
        ("coordination.k8s.io", "leases", "get", (lease,)),
        ("coordination.k8s.io", "leases", "update", (lease,)),
    }
    container = one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["KUBELOOP_LEADER_LEASE_NAME"]["value"] == lease
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    source = (REPO_ROOT / "operators" / "cluster" / "election.py").read_text()
    calls = {
        m
        for m in ("read_namespaced_lease", "create_namespaced_lease", "replace_namespaced_lease")
        if f".{m}(" in source
    }
    assert len(calls) == 3
    assert "delete_" not in source and "patch_" not in source


def test_handlers_use_only_granted_calls():
    source = (REPO_ROOT / "operators" / "cluster" / "handlers.py").read_text()
    used = {
        "get_namespaced_custom_object": ("serving.kserve.io", "get"),
        "create_namespaced_custom_object": ("serving.kserve.io", "create"),
        "patch_namespaced_custom_object": ("serving.kserve.io", "patch"),
        "create_namespaced_event": ("", "create"),
    }
    calls = {name for name in used if f".{name}(" in source}
    assert calls == set(used)
    assert "delete_" not in source and "replace_" not in source
