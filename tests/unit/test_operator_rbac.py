"""The operator's RBAC grants exactly what its code uses, and its manifests validate."""

from __future__ import annotations

import yaml

from kubeloop.generated import REPO_ROOT

OPERATOR = REPO_ROOT / "manifests" / "operator"


def docs():
    for path in sorted(OPERATOR.glob("*.yaml")):
        yield from (d for d in yaml.safe_load_all(path.read_text()) if d)


def test_manifests_validate_against_kubernetes_schemas():
    import kubernetes_validate

    for doc in docs():
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_cluster_role_is_least_privilege():
    role = next(d for d in docs() if d["kind"] == "ClusterRole")
    grants = {
        (g, r): set(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert grants == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
        ("kubeloop.io", "modeldeployments"): {"get", "list", "watch", "patch"},
        ("kubeloop.io", "modeldeployments/status"): {"get", "patch"},
        ("serving.kserve.io", "inferenceservices"): {"get", "create", "patch"},
        ("", "events"): {"create"},
    }
    assert not any("*" in v for verbs in grants.values() for v in verbs)


def test_lease_role_grants_exactly_the_elector_calls():
    role = next(d for d in docs() if d["kind"] == "Role")
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
    deployment = next(d for d in docs() if d["kind"] == "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
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
