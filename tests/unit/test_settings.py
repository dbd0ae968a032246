"""Settings: KUBELOOP_ prefix, nested ``__``, YAML file, and errors that name the field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubeloop.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("KUBELOOP_") or name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no kubeloop.yaml of the checkout leaks in
    return tmp_path


def test_defaults_and_derived_paths():
    s = load_settings()
    assert s.home == Path("var") and s.model_name == "fraud-detector"
    assert s.data_dir == Path("var/data") and s.feast_dir == Path("var/feast")
    assert s.registry_uri == str(Path("var/registry"))


def test_env_prefix_and_nested_delimiter(monkeypatch):
    monkeypatch.setenv("KUBELOOP_HOME", "/srv/kubeloop")
    monkeypatch.setenv("KUBELOOP_MODEL_NAME", "churn-model")
    monkeypatch.setenv("KUBELOOP_OBJECTIVES__MIN_ROC_AUC", "0.91")
    monkeypatch.setenv("KUBELOOP_S3__ENDPOINT", "minio.kubeloop:9000")
    monkeypatch.setenv("MODEL_NAME", "ignored-without-prefix")
    s = load_settings()
    assert s.model_name == "churn-model" and s.objectives.min_roc_auc == 0.91
    assert s.s3.endpoint == "minio.kubeloop:9000"
    assert s.feast_dir == Path("/srv/kubeloop/feast")


def test_yaml_file_with_env_taking_priority(tmp_path, monkeypatch):
    (tmp_path / "kubeloop.yaml").write_text(
        "training:\n  epochs: 3\n  batch_size: 64\nmodel_name: from-yaml\n"
    )
    s = load_settings()
    assert (s.training.epochs, s.training.batch_size, s.model_name) == (3, 64, "from-yaml")
    monkeypatch.setenv("KUBELOOP_MODEL_NAME", "from-env")
    assert load_settings().model_name == "from-env"


def test_config_path_from_env(tmp_path, monkeypatch):
    cfg = tmp_path / "elsewhere.yaml"
    cfg.write_text("gate:\n  champion_tolerance: 0.05\n")
    monkeypatch.setenv("KUBELOOP_CONFIG", str(cfg))
    assert load_settings().gate.champion_tolerance == 0.05
    monkeypatch.setenv("KUBELOOP_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(SettingsError, match="missing.yaml does not exist"):
        load_settings()


@pytest.mark.parametrize(
    "env, field",
    [
        ({"KUBELOOP_OBJECTIVES__MIN_ROC_AUC": "1.5"}, "objectives.min_roc_auc"),
        ({"KUBELOOP_TRAINING__EPOCHS": "many"}, "training.epochs"),
        ({"KUBELOOP_MODEL_NAME": "Not_A_DNS_Name"}, "model_name"),
        ({"KUBELOOP_REGISTRY_URI": "gs://bucket"}, "registry_uri"),
    ],
)
def test_bad_field_is_named(monkeypatch, env, field):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match=rf"invalid kubeloop settings: {field}"):
        load_settings()


def test_bad_yaml_is_named(tmp_path):
    (tmp_path / "kubeloop.yaml").write_text("unknown_knob: 1\n")
    with pytest.raises(SettingsError, match="unknown_knob"):
        load_settings()
    (tmp_path / "kubeloop.yaml").write_text("training: [unclosed\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings()
    (tmp_path / "kubeloop.yaml").write_text("- a\n- b\n")
    with pytest.raises(SettingsError, match="must hold a mapping"):
        load_settings()


def test_s3_credentials_fall_back_to_aws_env(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sk")
    s = load_settings()
    assert (s.s3.access_key, s.s3.secret_key) == ("ak", "sk")
