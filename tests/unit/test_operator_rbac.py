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


def one(kind: str, suffix: str = "") -> dict:
    """The one object of ``kind`` whose name is the operator's plus ``suffix`` (the Role
    serving the release namespace, ``-leader-election``, ``-kserve-config``)."""
    (doc,) = [d for d in docs() if d["kind"] == kind and d["metadata"]["name"] == OPERATOR + suffix]
    return doc


def grants_of(role: dict) -> dict[tuple[str, str], set[str]]:
    return {
        (g, r): set(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }


def test_manifests_validate_against_kubernetes_schemas():
    import kubernetes_validate

    assert {d["kind"] for d in docs()} == KINDS
    for doc in docs():
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_roles_are_least_privilege():
    """Cluster-wide only CRD discovery; the rest in the served (release) namespace; KServe's
    one ConfigMap in KServe's namespace; no Secrets anywhere."""
    assert grants_of(one("ClusterRole")) == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    }
    served = one("Role")
    assert served["metadata"]["namespace"] == one("Deployment")["metadata"]["namespace"]
    assert grants_of(served) == {
        ("kubeloop.io", "modeldeployments"): {"list", "watch", "patch"},
        ("kubeloop.io", "modeldeployments/status"): {"patch"},
        ("serving.kserve.io", "inferenceservices"): {"get", "create", "patch"},
        ("", "events"): {"create"},
        ("", "serviceaccounts"): {"get"},
    }
    kserve = one("Role", "-kserve-config")
    assert kserve["metadata"]["namespace"] == "kserve"
    assert grants_of(kserve) == {("", "configmaps"): {"get"}}
    assert [r["resourceNames"] for r in kserve["rules"]] == [["inferenceservice-config"]]
    every = [grants_of(d) for d in docs() if d["kind"] in ("ClusterRole", "Role")]
    assert not any("*" in v for grants in every for verbs in grants.values() for v in verbs)
    assert not any(r == "secrets" for grants in every for _, r in grants)


def test_bindings_give_the_roles_to_the_operator_service_account():
    account = one("ServiceAccount")["metadata"]
    for kind, role, suffix in (
        ("ClusterRoleBinding", "ClusterRole", ""),
        ("RoleBinding", "Role", ""),
        ("RoleBinding", "Role", "-leader-election"),
        ("RoleBinding", "Role", "-kserve-config"),
    ):
        binding = one(kind, suffix)
        assert binding["metadata"].get("namespace") == one(role, suffix)["metadata"].get(
            "namespace"
        )
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role,
            "name": one(role, suffix)["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
        ]
    pod = one("Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["name"]


def test_lease_role_grants_exactly_the_elector_calls():
    role = one("Role", "-leader-election")
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
    source = "\n".join(
        (REPO_ROOT / "operators" / "cluster" / name).read_text()
        for name in ("handlers.py", "kserve.py")
    )
    used = {
        "get_namespaced_custom_object": ("serving.kserve.io", "get"),
        "create_namespaced_custom_object": ("serving.kserve.io", "create"),
        "patch_namespaced_custom_object": ("serving.kserve.io", "patch"),
        "create_namespaced_event": ("", "create"),
        "read_namespaced_service_account": ("", "get"),
        "read_namespaced_config_map": ("", "get"),  # KServe's inferenceservice-config
    }
    calls = {name for name in used if f".{name}(" in source}
    assert calls == set(used)
    assert "delete_" not in source and "replace_" not in source
