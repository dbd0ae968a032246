"""The ``ModelDeployment`` CustomResourceDefinition, generated from the models in
:mod:`kubeloop.operators.crd`: their JSON schema made structural (OpenAPI v3, no
``$ref``/``anyOf``), with the models' CEL rules, printer columns and names.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from kubeloop.operators.crd import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
)
from pydantic import BaseModel

# `kubectl get kubeloop` lists every kubeloop resource.
CATEGORIES = ["kubeloop"]


def _structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Turns a pydantic JSON schema into a Kubernetes structural OpenAPI v3 schema."""
    schema = copy.deepcopy(schema)
    if "$ref" in schema:
        target = defs[schema.pop("$ref").split("/")[-1]]
        merged = {**copy.deepcopy(target), **schema}
        return _structural(merged, defs)
    if "anyOf" in schema:
        options = [o for o in schema.pop("anyOf") if o.get("type") != "null"]
        nullable = len(options) == 1
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {options}")
        merged = {**_structural(options[0], defs), **schema}
        if nullable:
            merged["nullable"] = True
        schema = merged
    schema.pop("title", None)
    schema.pop("$defs", None)
    # JSON Schema 2020 writes exclusive bounds as numbers; OpenAPI v3.0 as flags.
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(schema.get(bound), int | float) and not isinstance(schema[bound], bool):
            schema[flag] = schema.pop(bound)
            schema[bound] = True
    if "default" in schema:
        if schema["default"] is None:
            schema.pop("default")
        else:
            schema["default"] = _drop_none(schema["default"])
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    if schema.get("type") == "object" or "properties" in schema:
        schema["type"] = "object"
        props = schema.get("properties")
        if props:
            schema["properties"] = {k: _structural(v, defs) for k, v in props.items()}
        extra = schema.pop("additionalProperties", None)
        # `additionalProperties: false` is implied by `properties` in a structural schema.
        if isinstance(extra, dict) and extra:
            schema["additionalProperties"] = _structural(extra, defs)
        elif not props:
            schema["x-kubernetes-preserve-unknown-fields"] = True
    if schema.get("type") == "array" and "items" in schema:
        schema["items"] = _structural(schema["items"], defs)
    if "enum" in schema and "type" not in schema:
        schema["type"] = "string"
    if schema == {} or (
        "type" not in schema and "x-kubernetes-preserve-unknown-fields" not in schema
    ):
        schema.setdefault("x-kubernetes-preserve-unknown-fields", True)
    return schema


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def _schema_of(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="serialization")
    return _structural(raw, raw.get("$defs", {}))


def _column(name: str, type_: str, path: str, description: str, wide: bool = False) -> dict:
    column = {"name": name, "type": type_, "jsonPath": path, "description": description}
    if wide:
        column["priority"] = 1  # only in `kubectl get -o wide`
    return column


PRINTER_COLUMNS = [
    _column(
        "Ready", "string", ".status.conditions[?(@.type=='Ready')].status", "the Ready condition"
    ),
    _column("Stable", "string", ".status.stableVersion", "the version serving (most) traffic"),
    _column("Candidate", "string", ".status.candidateVersion", "the version under canary"),
    _column("Canary %", "integer", ".status.canaryPercent", "traffic sent to the candidate"),
    _column("Drift", "string", ".status.drift", "drift on the stable version"),
    _column("Age", "date", ".metadata.creationTimestamp", "time since creation"),
    _column("Phase", "string", ".status.phase", "where the rollout stands", wide=True),
    _column("Previous", "string", ".status.previousVersion", "the rollback target", wide=True),
    _column(
        "Seconds To Detect",
        "number",
        ".status.analysis.secondsToDetect",
        "estimated time for this step to detect an accuracy drop of maxAccuracyDrop",
        wide=True,
    ),
]


def crd_manifest() -> dict[str, Any]:
    spec_schema = _schema_of(ModelDeploymentSpec)
    status_schema = _schema_of(ModelDeploymentStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": CATEGORIES,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A model served from the registry with canary rollouts, "
                            "drift monitoring and drift-triggered retraining.",
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": "the versioned schema of this object",
                                },
                                "kind": {
                                    "type": "string",
                                    "description": "the REST resource this object represents",
                                },
                                "metadata": {
                                    "type": "object",
                                    "description": "standard object metadata",
                                },
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                            "required": ["spec"],
                        }
                    },
                }
            ],
        },
    }


def render_crds() -> dict[str, str]:
    """Generator for ``kubeloop.generated``: the CRD YAML under ``manifests/crds/``."""
    from kubeloop.generated import GENERATED_HEADER

    header = GENERATED_HEADER.format(source="kubeloop.operators.crd_manifest")
    body = yaml.safe_dump(crd_manifest(), sort_keys=False, allow_unicode=True, width=100)
    return {f"manifests/crds/{PLURAL}.{GROUP}.yaml": f"{header}\n{body}"}
