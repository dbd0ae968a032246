"""The chart's operator RBAC grants every verb the operator's code uses, and nothing more.

The grants the operator needs are derived from its code, not listed by hand:
- kopf's registry (``build_registry``): each served resource is listed, watched and
  patched (progress annotations), and its status subresource patched; kopf follows CRDs
  (list/watch) and posts Events;
- the Kubernetes client calls in ``operators/`` (an AST scan): each call on a kubernetes
  API object maps to (API group, resource, verb), group and plural evaluated from the
  module's own constants.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import typing
from pathlib import Path

import kubernetes.client as k8s
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubeloop"
HELM = ROOT / ".venv-tools" / "bin" / "helm"
OPERATOR_CODE = ROOT / "operators"

API_GROUPS = {
    k8s.CoreV1Api: "",
    k8s.AppsV1Api: "apps",
    k8s.BatchV1Api: "batch",
    k8s.CoordinationV1Api: "coordination.k8s.io",
    k8s.EventsV1Api: "events.k8s.io",
    k8s.NetworkingV1Api: "networking.k8s.io",
    k8s.RbacAuthorizationV1Api: "rbac.authorization.k8s.io",
    k8s.ApiextensionsV1Api: "apiextensions.k8s.io",
}
VERBS = {
    "read": "get",
    "get": "get",
    "list": "list",
    "create": "create",
    "patch": "patch",
    "replace": "update",
    "delete": "delete",
    "delete_collection": "deletecollection",
}
METHOD_RE = re.compile(
    r"^(read|get|list|create|patch|replace|delete_collection|delete)_(namespaced_|cluster_)?"
    r"([a-z_]+?)(_status|_scale)?$"
)
# Positional index of (group, plural) in CustomObjectsApi methods.
CUSTOM_ARGS = {"namespaced": (0, 3), "cluster": (0, 2)}

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)
# Leader election's Lease lives in the release namespace: its grants go to their own Role.
ELECTION = {("coordination.k8s.io", "leases")}
# KServe's inferenceservice-config ConfigMap: a Role in KServe's namespace.
KSERVE_CONFIG = {("", "configmaps")}


def election_grants(grants: set[Grant]) -> set[Grant]:
    return {g for g in grants if g[:2] in ELECTION}


def kserve_grants(grants: set[Grant]) -> set[Grant]:
    return {g for g in grants if g[:2] in KSERVE_CONFIG}


def namespace_grants(grants: set[Grant]) -> set[Grant]:
    """What the operator needs in each namespace it serves (ModelDeployments,
    InferenceServices, Events, the storage ServiceAccount)."""
    return {
        g
        for g in grants - election_grants(grants) - kserve_grants(grants)
        if g[1] != "customresourcedefinitions"
    }


def _plural(kind: str) -> str:
    word = kind.replace("_", "")
    if word.endswith("y"):
        return word[:-1] + "ies"
    return word if word.endswith("s") else word + "s"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return "kubeloop." + ".".join(rel.parts)


def _receiver_classes(module) -> dict[str, type]:
    """attribute name → kubernetes API class, from dataclass-style annotations in the module."""
    found: dict[str, type] = {}
    for obj in vars(module).values():
        if isinstance(obj, type) and obj.__module__ == module.__name__:
            try:
                hints = typing.get_type_hints(obj)
            except Exception:
                continue
            for attr, hint in hints.items():
                if hint is k8s.CustomObjectsApi or hint in API_GROUPS:
                    found[attr] = hint
    return found


def client_calls(
    source: str, namespace: dict, receivers: dict[str, type], where: str
) -> set[Grant]:
    """Grants used by kubernetes client calls in one module's source."""
    grants: set[Grant] = set()
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        method = node.func.attr
        m = METHOD_RE.match(method)
        if not m:
            continue
        receiver = node.func.value
        recv_name = (
            receiver.attr if isinstance(receiver, ast.Attribute) else getattr(receiver, "id", "")
        )
        candidates = [c for c in [k8s.CustomObjectsApi, *API_GROUPS] if hasattr(c, method)]
        if not candidates:
            continue
        api = receivers.get(recv_name)
        if api is None:
            assert len(candidates) == 1, (
                f"{where}:{node.lineno}: {method} is ambiguous: {candidates}"
            )
            api = candidates[0]
        verb_word, scope, kind, sub = m.groups()
        verb = VERBS[verb_word]
        if api is k8s.CustomObjectsApi:
            gi, pi = CUSTOM_ARGS["cluster" if scope == "cluster_" else "namespaced"]
            kwargs = {kw.arg: kw.value for kw in node.keywords}
            exprs = [
                kwargs.get("group", node.args[gi] if len(node.args) > gi else None),
                kwargs.get("plural", node.args[pi] if len(node.args) > pi else None),
            ]
            try:
                group, plural = (
                    eval(compile(ast.Expression(e), where, "eval"), namespace) for e in exprs
                )
            except Exception as exc:
                raise AssertionError(
                    f"{where}:{node.lineno}: {method}: group/plural must be module constants ({exc})"
                ) from exc
            resource = plural
        else:
            group, resource = API_GROUPS[api], _plural(kind)
        if sub:
            resource += "/" + sub[1:]
        grants.add((group, resource, verb))
    return grants


def _has_client_calls(source: str) -> bool:
    api_classes = [k8s.CustomObjectsApi, *API_GROUPS]
    return any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and METHOD_RE.match(node.func.attr)
        and any(hasattr(c, node.func.attr) for c in api_classes)
        for node in ast.walk(ast.parse(source))
    )


def kopf_grants() -> set[Grant]:
    from kubeloop.operators.cluster.main import build_registry
    from kubeloop.operators.crd_manifest import crd_manifest
    from kubeloop.operators.settings import load_operator_settings

    registry = build_registry(load_operator_settings(), None)
    selectors = {
        (h.selector.group, h.selector.plural)
        for reg in (registry._changing, registry._watching, registry._spawning, registry._indexing)
        for h in reg.get_all_handlers()
    }
    assert selectors, "the operator registers no kopf handlers"
    crd = crd_manifest()
    served = {(crd["spec"]["group"], crd["spec"]["names"]["plural"])}
    with_status = {
        (crd["spec"]["group"], crd["spec"]["names"]["plural"])
        for v in crd["spec"]["versions"]
        if "status" in v.get("subresources", {})
    }
    assert selectors <= served, (
        f"kopf handlers on resources without a CRD here: {selectors - served}"
    )
    grants: set[Grant] = {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "events", "create"),  # kopf posts an Event per handler outcome
    }
    for group, plural in selectors:
        grants |= {(group, plural, v) for v in ("list", "watch", "patch")}
        if (group, plural) in with_status:
            grants.add((group, f"{plural}/status", "patch"))
    return grants


def derived_grants() -> set[Grant]:
    grants = kopf_grants()
    for path in sorted(OPERATOR_CODE.rglob("*.py")):
        rel = path.relative_to(OPERATOR_CODE)
        if rel.parts[0] in ("local", "tests") or path.name == "__main__.py":
            continue  # the local driver never calls the Kubernetes API
        source = path.read_text()
        if not _has_client_calls(source):
            continue
        module = importlib.import_module(_module_name(path))
        grants |= client_calls(source, vars(module), _receiver_classes(module), str(path))
    return grants


def _role_grants(role: dict) -> set[Grant]:
    return {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def _render(*args: str) -> list[dict]:
    if not HELM.exists():
        if os.environ.get("CI"):
            pytest.fail("helm missing: `make helm`")
        pytest.skip("helm missing: `make helm`")
    proc = subprocess.run(
        [str(HELM), "template", "kl", str(CHART), "-n", "kubeloop", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_derivation_sees_the_operator_calls() -> None:
    grants = derived_grants()
    assert ("serving.kserve.io", "inferenceservices", "create") in grants
    assert ("kubeloop.io", "modeldeployments", "watch") in grants
    # The elector reads, creates and replaces (update) its Lease, and nothing else.
    assert election_grants(grants) == {
        ("coordination.k8s.io", "leases", verb) for verb in ("get", "create", "update")
    }


def _leader_election_role(docs: list[dict]) -> dict:
    roles = [
        d
        for d in docs
        if d["kind"] == "Role" and d["metadata"]["name"].endswith("-leader-election")
    ]
    assert len(roles) == 1, "one leader-election Role"
    assert roles[0]["metadata"]["namespace"] == "kubeloop"  # the release namespace
    return roles[0]


def _kserve_config_role(docs: list[dict], namespace: str = "kserve") -> dict:
    roles = [
        d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-kserve-config")
    ]
    assert len(roles) == 1, "one Role for KServe's ConfigMap"
    assert roles[0]["metadata"]["namespace"] == namespace  # prerequisites.kserveNamespace
    for rule in roles[0]["rules"]:
        assert rule["resourceNames"] == ["inferenceservice-config"]
    return roles[0]


def _assert_exact(granted: set[Grant], wanted: set[Grant]) -> None:
    assert not wanted - granted, f"used but not granted: {sorted(wanted - granted)}"
    assert not granted - wanted, f"granted but never used: {sorted(granted - wanted)}"
    assert not any("*" in part for grant in granted for part in grant)


def test_default_chart_rbac_serves_the_release_namespace_only() -> None:
    """The default scope is the release namespace: a Role there, the cluster-wide role only
    for CRD discovery; every grant is one the code uses."""
    docs = _render()
    used = derived_grants()
    cluster = next(d for d in docs if d["kind"] == "ClusterRole")
    served = [
        d
        for d in docs
        if d["kind"] == "Role"
        and not d["metadata"]["name"].endswith(("-leader-election", "-kserve-config"))
    ]
    assert [r["metadata"]["namespace"] for r in served] == ["kubeloop"]
    _assert_exact(
        _role_grants(cluster),
        used - namespace_grants(used) - election_grants(used) - kserve_grants(used),
    )
    _assert_exact(_role_grants(served[0]), namespace_grants(used))
    _assert_exact(_role_grants(_kserve_config_role(docs)), kserve_grants(used))
    _assert_exact(_role_grants(_leader_election_role(docs)), election_grants(used))
    assert ("", "serviceaccounts", "get") in namespace_grants(used)
    assert not [g for g in used if g[1] == "secrets"], "the operator never reads Secrets"


def test_cluster_wide_chart_rbac_is_exactly_what_the_code_uses() -> None:
    docs = _render(
        "--set",
        "operator.watchAllNamespaces=true",
        "--set",
        "prerequisites.kserveNamespace=kserve-system",
    )
    roles = [d for d in docs if d["kind"] in ("ClusterRole", "Role")]
    assert sorted(r["kind"] for r in roles) == ["ClusterRole", "Role", "Role"]
    cluster = next(r for r in roles if r["kind"] == "ClusterRole")
    used = derived_grants()
    _assert_exact(_role_grants(_kserve_config_role(docs, "kserve-system")), kserve_grants(used))
    for granted, wanted in (
        (_role_grants(cluster), used - election_grants(used) - kserve_grants(used)),
        (_role_grants(_leader_election_role(docs)), election_grants(used)),
    ):
        assert not wanted - granted, f"used but not granted: {sorted(wanted - granted)}"
        assert not granted - wanted, f"granted but never used: {sorted(granted - wanted)}"
        assert not any("*" in part for grant in granted for part in grant)


def test_lease_get_and_update_are_limited_to_the_operator_lease() -> None:
    docs = _render()
    role = _leader_election_role(docs)
    operator = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("operator")
    )
    env = {
        e["name"]: e.get("value")
        for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    for rule in role["rules"]:
        if "create" in rule["verbs"]:
            assert "resourceNames" not in rule  # RBAC cannot name an object not yet created
        else:
            assert rule["resourceNames"] == [env["KUBELOOP_LEADER_LEASE_NAME"]]


def test_namespaced_chart_rbac_splits_cluster_and_namespace_grants() -> None:
    docs = _render("--set", "operator.watchNamespaces={ml-team-a,ml-team-b}")
    cluster = _role_grants(next(d for d in docs if d["kind"] == "ClusterRole"))
    for ns in ("ml-team-b", "ml-team-a"):
        role_doc = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["namespace"] == ns)
        namespaced = _role_grants(role_doc)
        assert namespaced == namespace_grants(derived_grants())
    election = _role_grants(_leader_election_role(docs))
    kserve = _role_grants(_kserve_config_role(docs))
    assert cluster | namespaced | election | kserve == derived_grants()
    assert election == election_grants(derived_grants())
    assert {g[1] for g in cluster} == {"customresourcedefinitions"}
    binding = next(
        d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["namespace"] == "ml-team-a"
    )
    assert binding["roleRef"]["name"] == role_doc["metadata"]["name"]


def test_kustomize_base_rbac_is_exactly_what_the_code_uses() -> None:
    """manifests/base is the chart rendered (`make manifests-base`), the one other install
    source: its operator RBAC is the chart's, so it grants exactly the derived calls."""
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests/base/kubeloop.yaml").read_text()) if d]
    cluster = next(d for d in docs if d["kind"] == "ClusterRole")
    served = next(
        d
        for d in docs
        if d["kind"] == "Role" and d["metadata"]["name"] == cluster["metadata"]["name"]
    )
    used = derived_grants()
    assert _role_grants(cluster) | _role_grants(served) == (
        used - election_grants(used) - kserve_grants(used)
    )
    assert _role_grants(served) == namespace_grants(used)
    assert _role_grants(_kserve_config_role(docs)) == kserve_grants(used)
    assert _role_grants(_leader_election_role(docs)) == election_grants(used)


def test_derivation_catches_new_calls() -> None:
    source = (
        "def f(deps, ns):\n"
        "    deps.core.delete_namespaced_pod('p', ns)\n"
        "    deps.core.list_namespaced_config_map(ns)\n"
        "    deps.custom.patch_namespaced_custom_object_status(GROUP, 'v1', ns, PLURAL, 'n', {})\n"
        "    deps.custom.list_cluster_custom_object(group=GROUP, version='v1', plural='things')\n"
    )
    grants = client_calls(
        source,
        {"GROUP": "example.io", "PLURAL": "widgets"},
        {"core": k8s.CoreV1Api, "custom": k8s.CustomObjectsApi},
        "sample.py",
    )
    assert grants == {
        ("", "pods", "delete"),
        ("", "configmaps", "list"),
        ("example.io", "widgets/status", "patch"),
        ("example.io", "things", "list"),
    }


def test_derivation_refuses_unresolvable_resources() -> None:
    source = "def f(deps, plural):\n    deps.custom.get_namespaced_custom_object('g', 'v1', 'ns', plural, 'n')\n"
    with pytest.raises(AssertionError, match="must be module constants"):
        client_calls(source, {}, {"custom": k8s.CustomObjectsApi}, "sample.py")
