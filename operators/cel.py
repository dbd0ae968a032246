"""Cross-field rules of the ``ModelDeployment`` spec, each stated once for both enforcers.

A :class:`Rule` pairs a CEL expression, which the API server evaluates when a resource is
applied (the CRD's ``x-kubernetes-validations``), with the same condition in Python,
which pydantic evaluates in the operator, under one message. The two sit side by side in
the rule, so a spec the API server accepts is one the operator accepts, and the tests
evaluate both on the same objects.

Attach rules to a field with ``Annotated[T, Rules(...)]``, or to a model with its
``cel_rules`` class attribute (see ``kubeloop.operators.crd._Model``). A rule that
iterates a list needs ``maxItems`` on it: the API server rejects a CRD whose rules'
estimated cost, computed from the lists' largest sizes, exceeds its budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import core_schema

VALIDATIONS = "x-kubernetes-validations"


@dataclass(frozen=True)
class Rule:
    """One rule: ``cel`` on ``self`` (the field's or the object's wire value, camelCase),
    ``holds`` on the Python value, and the ``message`` both report when it fails."""

    cel: str
    message: str
    holds: Callable[[Any], bool]
    # Where the API server points the error, relative to ``self`` (e.g. ``.version``).
    field_path: str | None = None

    def validation(self) -> dict[str, str]:
        out = {"rule": self.cel, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


def check(rules: Iterable[Rule], value: Any) -> Any:
    """``value`` when every rule holds; else ``ValueError`` with each failed rule's message."""
    failed = [rule.message for rule in rules if not rule.holds(value)]
    if failed:
        raise ValueError("; ".join(failed))
    return value


def add_validations(schema: dict[str, Any], rules: Iterable[Rule]) -> None:
    validations = [rule.validation() for rule in rules]
    if validations:
        schema[VALIDATIONS] = [*schema.get(VALIDATIONS, []), *validations]


@dataclass(frozen=True, init=False)
class Rules:
    """``Annotated`` metadata: the field's value must satisfy every rule, in pydantic
    (after the type's own validation) and in the generated schema."""

    rules: tuple[Rule, ...]

    def __init__(self, *rules: Rule) -> None:
        object.__setattr__(self, "rules", rules)

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            lambda value: check(self.rules, value), handler(source)
        )

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        json_schema = handler(schema)
        add_validations(json_schema, self.rules)
        return json_schema
