"""Request validation against a model version's schema (pure logic, no I/O).

V1 bodies (``{"instances": [...]}``) and V2 tensors are both turned into a list of
plain instance dicts, checked field by field against the :class:`DatasetSchema`: every
request feature must be present, feature-view features either all present or all
absent (then the entity key is required and the predictor looks them up in Feast),
values must have the declared type, be finite and lie in the declared range, and
unknown fields are refused. Every problem raises :class:`RequestRejected` with a
``reason`` from a fixed set (it labels a metric) and a message naming the field.

A batch is first checked column by column with a few C-level passes per feature
(types, finiteness, range, category set); only a batch that fails that pass is walked
row by row, which finds and names the first offending instance and field. Valid
instances are returned as they came (their values already have the column's type).
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
    # caught at the HTTP edge (kubeloop.serving.rest), before the body reaches the model
    "unknown_model",
    "unsupported_media_type",
    "body_timeout",
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


# V2 (Open Inference Protocol) request keys: anything else is refused, as V1 refuses
# unknown fields, rather than silently ignored. kserve's own client also sends
# `model_name` (and its request model declares `model_version`).
V2_REQUEST_KEYS = frozenset(
    {"id", "parameters", "inputs", "outputs", "model_name", "model_version"}
)
V2_TENSOR_KEYS = frozenset({"name", "shape", "datatype", "parameters", "data"})
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_V2_INT_RANGES = {
    f"{prefix}INT{bits}": (0, 2**bits - 1) if prefix else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    for prefix in ("", "U")
    for bits in (8, 16, 32, 64)
}


class RequestRejected(InvalidInput):
    """A client mistake: kserve turns it into a 400 with ``{"error": message}``."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.kind = reason  # the metric label; `reason` holds the message (kserve)


DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576
PAYLOAD_BYTES_PER_ROW = 1024  # a V1 row is ~220 bytes of JSON; 4x headroom for ids, spacing


def payload_limit_for(max_batch: int, max_payload_bytes: int | None = None) -> int:
    """The body-size limit: as given, else 1 MiB or enough for ``max_batch`` rows."""
    if max_payload_bytes is not None:
        return max_payload_bytes
    return max(DEFAULT_MAX_PAYLOAD_BYTES, max_batch * PAYLOAD_BYTES_PER_ROW)


@dataclass(frozen=True)
class Limits:
    max_batch: int = 256
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_request_id_chars: int = 128  # X-Request-Id or a V2 body's id (it becomes Ce-Id)
    body_timeout_s: float = 30.0  # the whole body must arrive within this
    thread_rows: int = 2048  # batches this large run validation and the forward pass off the loop


def check_v2_body(body: Any) -> None:
    """The shape of a V2 JSON body before kserve decodes it: an object with known keys."""
    if not isinstance(body, dict):
        raise RequestRejected("malformed_body", "V2 request body must be a JSON object")
    extra = body.keys() - V2_REQUEST_KEYS
    if extra:
        raise RequestRejected("unknown_field", f"unknown top-level fields: {sorted(extra)}")
    inputs = body.get("inputs")
    if not isinstance(inputs, list):
        raise RequestRejected("malformed_body", "V2 request needs 'inputs', a list of tensors")
    for k, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise RequestRejected("malformed_body", f"input {k} must be an object")
        extra = tensor.keys() - V2_TENSOR_KEYS
        if extra:
            name = tensor.get("name", k)
            raise RequestRejected(
                "unknown_field", f"input {name!r}: unknown fields {sorted(extra)}"
            )


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
        self._view_set = frozenset(self.view_names)
        self._request_checks = [_column_check(c) for c in self.request_features]
        self._view_checks = [_column_check(c) for c in self.view_features]
        self._entity_check = _column_check(self._entity_spec)
        self._request_plan = [_value_plan(c) for c in self.request_features]
        self._view_plan = [_value_plan(c) for c in self.view_features]
        self._entity_plan = [_value_plan(self._entity_spec)]

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
        if len(instances) <= _SMALL_BATCH:
            flags = [self._row_ok(inst) for inst in instances]
            if None not in flags:
                return ValidatedRequest(instances, [i for i, f in enumerate(flags) if f])
        else:
            fast = self._columns_ok(instances)
            if fast is not None:
                return ValidatedRequest(instances, fast)
        return self.validate_rows(instances)

    def validate_rows(self, instances: list[Any]) -> ValidatedRequest:
        """Row by row: coerces values to the column's type and names the first problem."""
        needs_lookup = []
        out = []
        for i, inst in enumerate(instances):
            row, lookup = self._instance(i, inst)
            out.append(row)
            if lookup:
                needs_lookup.append(i)
        return ValidatedRequest(out, needs_lookup)

    def _row_ok(self, inst: Any) -> bool | None:
        """One row: whether it needs a lookup when valid as sent; ``None`` otherwise."""
        if type(inst) is not dict or not inst.keys() <= self.allowed:
            return None
        if not _values_ok(inst, self._request_plan):
            return None
        present = len(self._view_set & inst.keys())
        lookup = present == 0
        if not lookup and (present != len(self._view_set) or not _values_ok(inst, self._view_plan)):
            return None
        if self.entity in inst:
            if not _values_ok(inst, self._entity_plan):
                return None
        elif lookup:
            return None
        if self.id_column and self.id_column in inst:
            value = inst[self.id_column]
            if type(value) is not str or len(value) > 128:
                return None
        return lookup

    def _columns_ok(self, instances: list[Any]) -> list[int] | None:
        """Rows needing a lookup when every value is valid as sent; ``None`` otherwise."""
        allowed = self.allowed
        for inst in instances:
            if type(inst) is not dict or not inst.keys() <= allowed:
                return None
        for check in self._request_checks:
            if not check(instances):
                return None
        if not self._view_set:
            lookup: list[int] = []
        else:
            view, n_view = self._view_set, len(self._view_set)
            counts = [len(view & inst.keys()) for inst in instances]
            lookup = [i for i, k in enumerate(counts) if k == 0]
            if len(lookup) + counts.count(n_view) != len(instances):
                return None  # some row sends part of the feature view
            full = (
                instances
                if not lookup
                else [r for r, k in zip(instances, counts, strict=True) if k]
            )
            if full:
                for check in self._view_checks:
                    if not check(full):
                        return None
        entity = self.entity
        with_entity = [inst for inst in instances if entity in inst]
        if with_entity and not self._entity_check(with_entity):
            return None
        if any(entity not in instances[i] for i in lookup):
            return None
        id_column = self.id_column
        if id_column:
            for inst in instances:
                value = inst.get(id_column)
                if value is not None and (type(value) is not str or len(value) > 128):
                    return None
                if value is None and id_column in inst:
                    return None
        return lookup

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
            flat = [v.item() if isinstance(v, np.generic) else v for v in flat]
            if datatype in _V2_INT_RANGES:
                _check_int_tensor(name, datatype, flat)
            columns[name] = flat
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


def _check_int_tensor(name: str, datatype: str, values: list[Any]) -> None:
    """An INT*/UINT* tensor holds integers in its datatype's range (12.5 is no INT64)."""
    lo, hi = _V2_INT_RANGES[datatype]
    if values and set(map(type, values)) == {int} and lo <= min(values) and max(values) <= hi:
        return
    for value in values:
        if type(value) is not int:
            raise RequestRejected(
                "wrong_type",
                f"input {name!r} has datatype {datatype} but holds {value!r}, not an integer",
            )
        if not lo <= value <= hi:
            raise RequestRejected(
                "out_of_range",
                f"input {name!r} holds {value}, outside the {datatype} range [{lo}, {hi}]",
            )


_SMALL_BATCH = 2  # up to this many rows, checking row by row beats column passes
_TYPES = {"float": float, "int": int, "bool": bool, "category": str, "string": str}
_MISSING = object()


def _bounds(spec: ColumnSpec) -> tuple[Any, Any]:
    """The column's range; an int column never leaves int64 (the model and Feast's type)."""
    if spec.dtype != "int":
        return spec.min, spec.max
    lo = INT64_MIN if spec.min is None else max(spec.min, INT64_MIN)
    hi = INT64_MAX if spec.max is None else min(spec.max, INT64_MAX)
    return lo, hi


def _value_plan(spec: ColumnSpec) -> tuple:
    categories = frozenset(spec.categories) if spec.categories else None
    return spec.name, _TYPES.get(spec.dtype), *_bounds(spec), categories


def _values_ok(row: dict[str, Any], plan: list[tuple]) -> bool:
    """True when each planned value is present and valid exactly as sent (no coercion)."""
    for name, kind, lo, hi, categories in plan:
        value = row.get(name, _MISSING)
        if type(value) is not kind:  # bool is its own type: True is no int here
            return False
        if kind is float and value - value != 0:  # NaN or an infinity
            return False
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            return False
        if categories is not None and value not in categories:
            return False
    return True


def _column_check(spec: ColumnSpec):
    """A batch check of one column: True when every row's value is valid exactly as sent.

    False means "look closer": the row-by-row path then coerces (an int sent for a
    float) or names the offending value.
    """
    name, (lo, hi) = spec.name, _bounds(spec)
    if spec.dtype == "float":
        types = {float}
    elif spec.dtype == "int":
        types = {int}  # bool is its own type, so True is no int here
    elif spec.dtype == "bool":
        types = {bool}
    elif spec.dtype in ("category", "string"):
        types = {str}
    else:
        return lambda rows: False
    numeric = spec.dtype in ("float", "int")
    categories = frozenset(spec.categories) if spec.categories else None

    def check(rows: list[dict[str, Any]]) -> bool:
        try:
            column = [row[name] for row in rows]
        except KeyError:
            return False
        if not set(map(type, column)) <= types:
            return False
        if numeric:
            total = sum(column)
            if total - total != 0:  # a NaN or an infinity somewhere (or an overflow)
                return False
            if lo is not None and min(column) < lo:
                return False
            if hi is not None and max(column) > hi:
                return False
        elif categories is not None and not categories.issuperset(column):
            return False
        return True

    return check


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
        lo, hi = _bounds(spec)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise RequestRejected(
                "out_of_range", f"instance {i}: {name!r}={value} is outside [{lo}, {hi}]"
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
