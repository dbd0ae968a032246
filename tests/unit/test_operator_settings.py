"""The operator's namespace scope: a chosen list, or every namespace by explicit opt-in;
anything else is refused at start-up with the variable named."""

from __future__ import annotations

import pytest
from kubeloop.operators.settings import load_operator_settings


def test_namespaces_come_from_a_json_list(monkeypatch):
    monkeypatch.setenv("KUBELOOP_OPERATOR_NAMESPACES", '["ml-a", "ml-b"]')
    assert load_operator_settings().watched_namespaces() == ["ml-a", "ml-b"]


def test_every_namespace_is_an_explicit_opt_in(monkeypatch):
    monkeypatch.setenv("KUBELOOP_OPERATOR_ALL_NAMESPACES", "true")
    assert load_operator_settings().watched_namespaces() == []  # kopf: cluster-wide


def test_no_scope_is_refused_before_anything_starts():
    with pytest.raises(
        ValueError, match="KUBELOOP_OPERATOR_NAMESPACES .* or KUBELOOP_OPERATOR_ALL_NAMESPACES=true"
    ):
        load_operator_settings().watched_namespaces()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"namespaces": ["ml-a"], "all_namespaces": True}, "not both"),
        ({"namespaces": ["Bad_NS"]}, "KUBELOOP_OPERATOR_NAMESPACES_0: String should match"),
        ({"namespaces": ["x" * 64]}, "KUBELOOP_OPERATOR_NAMESPACES_0"),
    ],
)
def test_bad_scopes_name_the_problem(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_operator_settings(**overrides)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("KUBELOOP_OPERATOR_NAMESPACES", ""),
        ("KUBELOOP_OPERATOR_NAMESPACES", "ml,team-b"),
        ("KUBELOOP_OPERATOR_PREDICTOR_PLACEMENT", "{nodeSelector: x}"),
    ],
)
def test_a_variable_that_is_not_json_is_named(monkeypatch, variable, raw):
    monkeypatch.setenv(variable, raw)
    with pytest.raises(ValueError, match=f"{variable}: .*not valid JSON"):
        load_operator_settings()


def test_json_variables_are_read(monkeypatch):
    monkeypatch.setenv("KUBELOOP_OPERATOR_NAMESPACES", '["ml", "team-b"]')
    monkeypatch.setenv("KUBELOOP_OPERATOR_PREDICTOR_PLACEMENT", '{"runtimeClassName": "nvidia"}')
    settings = load_operator_settings()
    assert settings.watched_namespaces() == ["ml", "team-b"]
    assert settings.predictor_placement.runtime_class_name == "nvidia"
