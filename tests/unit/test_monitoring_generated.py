"""Alert rules, ServiceMonitors, dashboards and the local Prometheus config (no services)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from kubeloop.generated import GENERATORS, REPO_ROOT
from kubeloop.local.prometheus import scrape_config
from kubeloop.monitoring import dashboards, rules

CONTRACT = (REPO_ROOT / "docs" / "contracts.md").read_text()
CONTRACT_NAMES = set(re.findall(r"`(kubeloop_[a-z_]+)`", CONTRACT))


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b(kubeloop_[a-z_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_registered_and_current_on_disk():
    assert "kubeloop.monitoring.rules:generate" in GENERATORS
    assert "kubeloop.monitoring.dashboards:generate" in GENERATORS
    for generate in (rules.generate, dashboards.generate):
        for rel, text in generate().items():
            assert (REPO_ROOT / rel).read_text() == text, f"{rel} is stale: run `make compile`"
            assert "do not edit" in text


def test_rules_use_only_contract_metrics():
    groups = yaml.safe_load(rules.rules_file())["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"]}
    assert set(alerts) == {"KubeloopDriftSustained", "KubeloopCanaryErrorRate", "KubeloopHighLatency",
                           "KubeloopLiveAccuracyBelowObjective", "KubeloopPayloadEventsDropped",
                           "KubeloopDriftServiceDown"}  # fmt: skip
    for alert in alerts.values():
        assert metric_names(alert["expr"]) <= CONTRACT_NAMES, alert["alert"]
        assert alert["labels"]["severity"] in ("warning", "critical")


def test_prometheus_rule_and_service_monitors_are_well_formed():
    docs = {rel: list(yaml.safe_load_all(text)) for rel, text in rules.generate().items()}
    rule = docs["manifests/monitoring/prometheusrule.yaml"][0]
    assert rule["kind"] == "PrometheusRule" and rule["spec"]["groups"] == rules.rule_groups()
    monitors = docs["manifests/monitoring/servicemonitors.yaml"]
    assert {m["kind"] for m in monitors} == {"ServiceMonitor"}
    drift = next(m for m in monitors if m["metadata"]["name"] == rules.DRIFT_JOB)
    assert drift["spec"]["jobLabel"] == "app.kubernetes.io/name"


def test_dashboards_cover_the_three_views():
    assert set(dashboards.DASHBOARDS) == {"model-overview", "drift", "quality"}
    for build in dashboards.DASHBOARDS.values():
        board = build()
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)) and "generated" in board["tags"]
        for title, expr in dashboards.panel_queries(board):
            assert metric_names(expr) <= CONTRACT_NAMES, (title, expr)
            assert expr.count("(") == expr.count(")"), (title, expr)


def test_scrape_config_and_bad_targets():
    cfg = yaml.safe_load(scrape_config({"kubeloop-drift": ["127.0.0.1:8090"]}, scrape_interval="1s",
                                       rule_files=["/x/rules.yaml"]))  # fmt: skip
    assert cfg["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:8090"]
    assert cfg["global"]["scrape_interval"] == "1s" and cfg["rule_files"] == ["/x/rules.yaml"]
    with pytest.raises(ValueError, match="host:port"):
        scrape_config({"kubeloop-drift": ["nohostport"]})


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool missing: run `make prometheus`"
)
def test_promtool_checks_and_unit_tests_the_rules():
    check = subprocess.run(["promtool", "check", "rules", "manifests/monitoring/rules.yaml"],
                           cwd=REPO_ROOT, capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(["promtool", "test", "rules", "manifests/monitoring/tests/rules_test.yaml"],
                          cwd=REPO_ROOT, capture_output=True, text=True)  # fmt: skip
    assert test.returncode == 0, test.stdout + test.stderr
