"""Request validation against a model version's schema (pure logic, no I/O).

V1 bodies (``{"instances": [...]}``) and V2 tensors are both turned into a list of
plain instance dicts, checked field by field against the :class:`DatasetSchema`: every
request feature must be present, feature-view features either all present or all
absent (then the entity key is required and the predictor looks them up in Feast),
values must have the declared type, be finite and lie in the declared range, and
unknown fields are refused. Every problem raises :class:`RequestRejected` with a
``reason`` from a fixed set (it labels a metric) and a message naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from kserve.errors import InvalidInput

from kubeloop.data.schema import ColumnSpec, DatasetSchema

# The fixed set of rejection reasons (the `reason` label of kubeloop_request_errors_total).
REASONS = (
    "malformed_body",
    "batch_too_large",
    "payload_too_large",
    "unknown_field",
    "missing_field",
    "wrong_type",
    "not_finite",
    "out_of_range",
    "unknown_category",
    "wrong_shape",
    "unknown_entity",
)

V2_DATATYPES = {
    "float": "FP64",
    "int": "INT64",
    "bool": "BOOL",
    "category": "BYTES",
    "string": "BYTES",
}
_V2_ACCEPTED = {
    "float": {
        "FP16",
        "FP32",
        "FP64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
    },
    "int": {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"},
    "bool": {"BOOL"},
    "category": {"BYTES"},
    "string": {"BYTES"},
}


class RequestRejected(InvalidInput):
    """A client mistake: kserve turns it into a 400 with ``{"error": message}``."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.kind = reason  # the metric label; `reason` holds the message (kserve)


@dataclass(frozen=True)
class Limits:
    max_batch: int = 256
    max_payload_bytes: int = 1_048_576


@dataclass
class ValidatedRequest:
    """Instances as the model will see them; ``needs_lookup`` indexes rows to enrich."""

    instances: list[dict[str, Any]]
    needs_lookup: list[int]


class InputValidator:
    """Validates instances against one schema; built once per loaded version."""

    def __init__(self, schema: DatasetSchema, limits: Limits = Limits()) -> None:
        self.schema = schema
        self.limits = limits
        self.entity = schema.entity
        self.request_features = schema.request_features
        self.view_features = schema.view_features
        self.view_names = {c.name for c in self.view_features}
        self.id_column = schema.id_column
        self.allowed = {
            *schema.feature_names,
            self.entity,
            *([self.id_column] if self.id_column else []),
        }
        self._entity_spec = schema.column(self.entity)

    # --- V1 ---------------------------------------------------------------------------
    def validate_v1(self, body: Any) -> ValidatedRequest:
        if isinstance(body, bytes | str):  # sent without a JSON content type
            try:
                body = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise RequestRejected(
                    "malformed_body", f"request body is not valid JSON: {exc}"
                ) from None
        if not isinstance(body, dict):
            raise RequestRejected(
                "malformed_body", "request body must be a JSON object with 'instances'"
            )
        extra = set(body) - {"instances", "parameters"}
        if extra:
            raise RequestRejected("unknown_field", f"unknown top-level fields: {sorted(extra)}")
        if "instances" not in body:
            raise RequestRejected("malformed_body", "request body needs an 'instances' list")
        return self.validate_instances(body["instances"])

    def validate_instances(self, instances: Any) -> ValidatedRequest:
        if not isinstance(instances, list):
            raise RequestRejected("malformed_body", "'instances' must be a list of objects")
        if not instances:
            raise RequestRejected("malformed_body", "'instances' is empty")
        if len(instances) > self.limits.max_batch:
            raise RequestRejected(
                "batch_too_large",
                f"batch of {len(instances)} instances exceeds the limit of {self.limits.max_batch}",
            )
        needs_lookup = []
        out = []
        for i, inst in enumerate(instances):
            row, lookup = self._instance(i, inst)
            out.append(row)
            if lookup:
                needs_lookup.append(i)
        return ValidatedRequest(out, needs_lookup)

    def _instance(self, i: int, inst: Any) -> tuple[dict[str, Any], bool]:
        if not isinstance(inst, dict):
            raise RequestRejected(
                "malformed_body", f"instance {i} must be an object, not {type(inst).__name__}"
            )
        unknown = [k for k in inst if k not in self.allowed]
        if unknown:
            raise RequestRejected(
                "unknown_field", f"instance {i}: unknown fields {sorted(map(str, unknown))}"
            )
        row: dict[str, Any] = {}
        for spec in self.request_features:
            if spec.name not in inst:
                raise RequestRejected(
                    "missing_field", f"instance {i}: missing request feature {spec.name!r}"
                )
            row[spec.name] = check_value(spec, inst[spec.name], i)
        present = [c.name for c in self.view_features if c.name in inst]
        lookup = not present
        if present and len(present) != len(self.view_features):
            missing = sorted(self.view_names - set(present))
            raise RequestRejected(
                "missing_field",
                f"instance {i}: send every feature-view feature or none (then they come from the "
                f"online store); missing {missing}",
            )
        for spec in self.view_features:
            if not lookup:
                row[spec.name] = check_value(spec, inst[spec.name], i)
        if self.entity in inst:
            row[self.entity] = check_value(self._entity_spec, inst[self.entity], i)
        elif lookup:
            raise RequestRejected(
                "missing_field",
                f"instance {i}: needs {self.entity!r} to look up its feature-view features",
            )
        if self.id_column and self.id_column in inst:
            value = inst[self.id_column]
            if not isinstance(value, str) or len(value) > 128:
                raise RequestRejected(
                    "wrong_type",
                    f"instance {i}: {self.id_column!r} must be a string up to 128 chars",
                )
            row[self.id_column] = value
        return row, lookup

    # --- V2 ---------------------------------------------------------------------------
    def v2_instances(self, inputs: list[tuple[str, str, list[int], Any]]) -> list[dict[str, Any]]:
        """Turns V2 named tensors ``(name, datatype, shape, values)`` into instance dicts."""
        if not inputs:
            raise RequestRejected("malformed_body", "V2 request has no inputs")
        columns: dict[str, list[Any]] = {}
        n = None
        for name, datatype, shape, values in inputs:
            if name not in self.allowed:
                raise RequestRejected("unknown_field", f"unknown input tensor {name!r}")
            if name in columns:
                raise RequestRejected("malformed_body", f"input tensor {name!r} given twice")
            if len(shape) != 1 or shape[0] < 0:
                raise RequestRejected(
                    "wrong_shape", f"input {name!r} must have shape [n], got {list(shape)}"
                )
            spec = self.schema.column(name)
            accepted = (
                _V2_ACCEPTED.get(spec.dtype, {"BYTES"}) if name != self.id_column else {"BYTES"}
            )
            if datatype not in accepted:
                raise RequestRejected(
                    "wrong_type",
                    f"input {name!r} has datatype {datatype}, expected one of {sorted(accepted)}",
                )
            flat = (
                values
                if isinstance(values, list)
                else list(np.asarray(values, dtype=object).reshape(-1))
            )
            if len(flat) != shape[0]:
                raise RequestRejected(
                    "wrong_shape",
                    f"input {name!r} declares shape {list(shape)} but holds {len(flat)} values",
                )
            if n is not None and shape[0] != n:
                raise RequestRejected(
                    "wrong_shape", f"input {name!r} has {shape[0]} rows, other inputs have {n}"
                )
            n = shape[0]
            if datatype == "BYTES":
                flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in flat]
            columns[name] = [v.item() if isinstance(v, np.generic) else v for v in flat]
        if n is None or n == 0:
            raise RequestRejected("wrong_shape", "V2 inputs hold no rows")
        if n > self.limits.max_batch:
            raise RequestRejected(
                "batch_too_large", f"batch of {n} rows exceeds the limit of {self.limits.max_batch}"
            )
        return [{name: col[j] for name, col in columns.items()} for j in range(n)]

    def v2_metadata_inputs(self) -> list[dict[str, Any]]:
        specs = [*self.request_features, *self.view_features, self._entity_spec]
        return [
            {
                "name": c.name,
                "datatype": V2_DATATYPES.get(c.dtype, "BYTES"),
                "shape": [-1],
                "parameters": {
                    "source": "entity" if c.name == self.entity else c.source,
                    "required": c.source == "request" and c.name != self.entity,
                    **({"min": c.min} if c.min is not None else {}),
                    **({"max": c.max} if c.max is not None else {}),
                    **({"categories": c.categories} if c.categories else {}),
                },
            }
            for c in specs
        ]


def check_value(spec: ColumnSpec, value: Any, i: int) -> Any:
    """Checks one value against its column spec; returns it in the column's Python type."""
    name = spec.name
    if value is None:
        if spec.nullable:
            return None
        raise RequestRejected("missing_field", f"instance {i}: {name!r} is null")
    if spec.dtype in ("float", "int"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestRejected(
                "wrong_type", f"instance {i}: {name!r} must be a number, got {type(value).__name__}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise RequestRejected(
                "not_finite", f"instance {i}: {name!r} must be finite, got {value}"
            )
        if spec.dtype == "int":
            if isinstance(value, float):
                if not value.is_integer():
                    raise RequestRejected(
                        "wrong_type", f"instance {i}: {name!r} must be an integer, got {value}"
                    )
                value = int(value)
        else:
            value = float(value)
        if (spec.min is not None and value < spec.min) or (
            spec.max is not None and value > spec.max
        ):
            raise RequestRejected(
                "out_of_range",
                f"instance {i}: {name!r}={value} is outside [{spec.min}, {spec.max}]",
            )
        return value
    if spec.dtype == "bool":
        if not isinstance(value, bool):
            raise RequestRejected("wrong_type", f"instance {i}: {name!r} must be true or false")
        return value
    if spec.dtype in ("category", "string"):
        if not isinstance(value, str):
            raise RequestRejected(
                "wrong_type", f"instance {i}: {name!r} must be a string, got {type(value).__name__}"
            )
        if spec.categories and value not in spec.categories:
            raise RequestRejected(
                "unknown_category",
                f"instance {i}: {name!r}={value[:64]!r} is not one of {spec.categories}",
            )
        return value
    raise RequestRejected(
        "wrong_type",
        f"instance {i}: {name!r} has dtype {spec.dtype}, which serving does not accept",
    )
