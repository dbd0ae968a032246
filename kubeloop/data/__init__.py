"""Data: declared schemas, sources, and the fraud example generator."""

from kubeloop.data.schema import ColumnSpec, DatasetSchema, SchemaError

__all__ = ["ColumnSpec", "DatasetSchema", "SchemaError"]
