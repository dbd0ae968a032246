"""Declared dataset schemas: what a source must contain and what each column means.

A schema names the entity key, the event timestamp, the label (and when it becomes
known), and each feature with its type, allowed range and where serving gets it:
``request`` features arrive with the prediction request, ``feature_view`` features
are looked up in the Feast online store by entity key. Any CSV or Parquet source can
be trained on once it has a schema; the fraud example ships one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

DType = Literal["float", "int", "bool", "category", "string", "timestamp"]
Role = Literal["id", "entity", "timestamp", "label", "label_timestamp", "feature"]
FeatureSource = Literal["request", "feature_view"]


class SchemaError(ValueError):
    """The schema itself is invalid, or a file is not a schema."""


class ColumnSpec(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    dtype: DType
    role: Role = "feature"
    source: FeatureSource = "request"
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> ColumnSpec:
        if self.dtype == "category" and self.role == "feature" and not self.categories:
            raise ValueError(f"category column {self.name!r} needs its categories listed")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"column {self.name!r}: min {self.min} > max {self.max}")
        return self


class DatasetSchema(BaseModel):
    """A declared schema for one event-level dataset."""

    name: str
    version: int = 1
    columns: list[ColumnSpec]
    positive_label: int = 1
    feature_view: str | None = Field(
        None, description="Feast feature view holding the feature_view-sourced features"
    )
    feature_service: str | None = Field(
        None, description="Feast feature service for training/serving"
    )

    @model_validator(mode="after")
    def _check_roles(self) -> DatasetSchema:
        names = [c.name for c in self.columns]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"duplicate columns in schema: {sorted(dupes)}")
        for role in ("entity", "timestamp", "label"):
            count = sum(c.role == role for c in self.columns)
            if count != 1:
                raise ValueError(f"schema needs exactly one {role!r} column, found {count}")
        if not self.features:
            raise ValueError("schema declares no feature columns")
        if any(c.source == "feature_view" for c in self.features) and not self.feature_view:
            raise ValueError("features sourced from a feature view need `feature_view` set")
        return self

    def _one(self, role: str) -> str:
        return next(c.name for c in self.columns if c.role == role)

    @property
    def entity(self) -> str:
        return self._one("entity")

    @property
    def timestamp(self) -> str:
        return self._one("timestamp")

    @property
    def label(self) -> str:
        return self._one("label")

    @property
    def label_timestamp(self) -> str | None:
        return next((c.name for c in self.columns if c.role == "label_timestamp"), None)

    @property
    def id_column(self) -> str | None:
        return next((c.name for c in self.columns if c.role == "id"), None)

    @property
    def features(self) -> list[ColumnSpec]:
        return [c for c in self.columns if c.role == "feature"]

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.features]

    @property
    def request_features(self) -> list[ColumnSpec]:
        return [c for c in self.features if c.source == "request"]

    @property
    def view_features(self) -> list[ColumnSpec]:
        return [c for c in self.features if c.source == "feature_view"]

    @property
    def source_columns(self) -> list[ColumnSpec]:
        """Columns a raw source file must hold (feature-view features are joined later)."""
        return [c for c in self.columns if not (c.role == "feature" and c.source == "feature_view")]

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    # --- files -------------------------------------------------------------------------
    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_file(cls, path: str | Path) -> DatasetSchema:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise SchemaError(f"cannot read schema file {path}: {exc}") from exc
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise SchemaError(f"schema file {path} is not valid {path.suffix[1:]}: {exc}") from exc
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SchemaError(f"invalid schema in {path}: {exc}") from exc
