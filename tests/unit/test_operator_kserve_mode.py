"""KServe's deployment mode as the operator reads it: KServe's own precedence (the mode
recorded on the InferenceService, its annotation, the ConfigMap default) and what each
mode means for a canary."""

from __future__ import annotations

import json

import pytest
from kubeloop.operators.cluster.kserve import default_mode_from_config, observed_mode

CONFIG = ("Serverless", "ConfigMap kserve/inferenceservice-config deploy.defaultDeploymentMode")


def isvc(status_mode=None, annotation=None):
    meta = {"name": "fd"}
    if annotation:
        meta["annotations"] = {"serving.kserve.io/deploymentMode": annotation}
    return {"metadata": meta, "status": {"deploymentMode": status_mode} if status_mode else {}}


@pytest.mark.parametrize(
    ("live", "annotation", "default", "name", "splits", "source"),
    [
        (None, None, CONFIG, "Serverless", True, "ConfigMap"),
        (None, None, ("RawDeployment", "ConfigMap"), "RawDeployment", False, "ConfigMap"),
        (None, None, ("Standard", "ConfigMap"), "Standard", False, "ConfigMap"),
        (None, None, ("Knative", "ConfigMap"), "Knative", True, "ConfigMap"),
        (None, None, ("ModelMesh", "ConfigMap"), "ModelMesh", False, "ConfigMap"),
        # Before the InferenceService exists: the annotation the operator will put on it.
        (None, "RawDeployment", CONFIG, "RawDeployment", False, "ModelDeployment annotation"),
        # KServe ignores a mode it does not know and uses the default.
        (None, "Fast", CONFIG, "Serverless", True, "ConfigMap"),
        (isvc(annotation="Fast"), None, CONFIG, "Serverless", True, "ConfigMap"),
        # Once created: the live annotation, then the mode KServe recorded, which wins.
        (isvc(annotation="RawDeployment"), None, CONFIG, "RawDeployment", False, "annotation"),
        (isvc("RawDeployment"), None, CONFIG, "RawDeployment", False, "status.deploymentMode"),
        (isvc("Serverless", "RawDeployment"), None, ("RawDeployment", "x"), "Serverless", True, "status"),
        # The live object's mode, not the annotation of a ModelDeployment changed later.
        (isvc(), "RawDeployment", CONFIG, "Serverless", True, "ConfigMap"),
        # Unknown: no split is assumed.
        (None, None, (None, "cannot read ConfigMap kserve/inferenceservice-config: 403"), "Unknown", False, "403"),
    ],
)  # fmt: skip
def test_mode_follows_kserve_precedence(live, annotation, default, name, splits, source):
    mode = observed_mode(live, annotation, default)
    assert (mode.name, mode.splits_traffic) == (name, splits)
    assert source in mode.source


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (None, "has no 'deploy' entry"),
        ({"ingress": "{}"}, "has no 'deploy' entry"),
        ({"deploy": "{nope"}, "'deploy' is not JSON"),
        ({"deploy": json.dumps({"other": 1})}, "names no defaultDeploymentMode"),
        ({"deploy": json.dumps(["Serverless"])}, "names no defaultDeploymentMode"),
    ],
)
def test_a_malformed_config_map_says_what_is_wrong(data, error):
    with pytest.raises(ValueError, match=error):
        default_mode_from_config(data)


def test_the_config_map_default_is_read_from_deploy():
    data = {"deploy": json.dumps({"defaultDeploymentMode": "RawDeployment"})}
    assert default_mode_from_config(data) == "RawDeployment"
