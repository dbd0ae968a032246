"""Security scan of the rendered chart with checkov (in .venv-tools, `make tools-venv`).

Checkov's community edition reports no severities offline, so every failed check is a
finding: it must be accepted, with its reason, in the chart README's table, and the
checks that guard against privilege may never be accepted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubeloop"
HELM = ROOT / ".venv-tools" / "bin" / "helm"
CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"
SCENARIOS = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
# High severity: running as root or privileged, privilege escalation, host namespaces and
# paths, added capabilities, RBAC wildcards / escalation / secret access, plain secrets.
NEVER_ACCEPTED = {
    "CKV_K8S_1", "CKV_K8S_2", "CKV_K8S_3", "CKV_K8S_4", "CKV_K8S_5", "CKV_K8S_6",  # PSP-era host/priv
    "CKV_K8S_16",  # privileged container
    "CKV_K8S_17", "CKV_K8S_18", "CKV_K8S_19",  # host PID / IPC / network
    "CKV_K8S_20",  # allowPrivilegeEscalation
    "CKV_K8S_22",  # read-only root filesystem
    "CKV_K8S_23", "CKV_K8S_40",  # root / low UID
    "CKV_K8S_25", "CKV_K8S_28", "CKV_K8S_37", "CKV_K8S_39",  # capabilities
    "CKV_K8S_27",  # docker socket
    "CKV_K8S_31",  # seccomp
    "CKV_K8S_49", "CKV_K8S_155", "CKV_K8S_156", "CKV_K8S_157", "CKV_K8S_158",  # RBAC wildcards, escalate, bind
    "CKV2_K8S_5",  # no ServiceAccount/Node read all secrets
}  # fmt: skip


def _tool(path: Path, how: str) -> str:
    if path.exists():
        return str(path)
    if os.environ.get("CI"):
        pytest.fail(f"{path} missing: {how}")
    pytest.skip(f"{path} missing: {how}")


def accepted_findings() -> dict[str, str]:
    """check id → reason, from the README table between the accepted-findings markers."""
    text = (CHART / "README.md").read_text()
    block = text.split("<!-- accepted-findings:start -->")[1].split(
        "<!-- accepted-findings:end -->"
    )[0]
    rows = {}
    for line in block.splitlines():
        m = re.match(r"^\|\s*(CKV2?_K8S_\d+)\s*\|\s*([^|]+?)\s*\|\s*([^|]+?)\s*\|$", line)
        if m:
            rows[m.group(1)] = m.group(3)
    return rows


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> dict[str, list[dict]]:
    helm = _tool(HELM, "`make helm`")
    checkov = _tool(CHECKOV, "`make tools-venv`")
    out_dir = tmp_path_factory.mktemp("rendered")
    for name in SCENARIOS:
        proc = subprocess.run(
            [helm, "template", "kl", str(CHART), "-n", "kubeloop", "-f", str(CHART / "ci" / name),
             "--api-versions", "monitoring.coreos.com/v1", "--api-versions", "serving.kserve.io/v1alpha1"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        (out_dir / name).write_text(proc.stdout)
    proc = subprocess.run(
        [checkov, "--directory", str(out_dir), "--framework", "kubernetes", "--output", "json",
         "--quiet", "--skip-download", "--compact"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )  # fmt: skip
    # checkov exits 1 when a check fails; anything else (or no JSON) is a broken run.
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    failed: dict[str, list[dict]] = {}
    for r in reports:
        assert r["summary"]["parsing_errors"] == 0, r["summary"]
        assert r["summary"]["passed"] > 100, "checkov ran suspiciously few checks"
        for check in r["results"]["failed_checks"]:
            failed.setdefault(check["check_id"], []).append(check)
    return failed


def test_accepted_findings_have_reasons() -> None:
    accepted = accepted_findings()
    assert accepted, "the README's accepted-findings table is empty or malformed"
    for check_id, reason in accepted.items():
        assert len(reason) > 30, f"{check_id}: give a real reason"
        assert check_id not in NEVER_ACCEPTED, f"{check_id} guards against privilege: fix it"


def test_no_unaccepted_findings(scan) -> None:
    accepted = accepted_findings()
    unaccepted = {
        cid: sorted({c["resource"] for c in checks})
        for cid, checks in scan.items()
        if cid not in accepted
    }
    assert not unaccepted, (
        f"checkov findings not accepted in charts/kubeloop/README.md: {unaccepted}"
    )
    assert not set(scan) & NEVER_ACCEPTED


def test_accepted_list_has_no_stale_entries(scan) -> None:
    stale = set(accepted_findings()) - set(scan)
    assert not stale, (
        f"accepted findings that no longer occur (remove them from the README): {stale}"
    )


def test_token_mounting_finding_is_only_the_operator(scan) -> None:
    resources = {c["resource"] for c in scan.get("CKV_K8S_38", [])}
    assert resources and all(r.endswith("-operator") for r in resources), resources
