"""Model registry: immutable, atomically published versions on a directory or S3."""

from kubeloop.registry.registry import (
    ChecksumMismatch,
    ModelRegistry,
    ModelVersion,
    VersionNotFound,
)
from kubeloop.registry.stores import LocalStore, RegistryError, S3Store, open_store

__all__ = [
    "ChecksumMismatch",
    "LocalStore",
    "ModelRegistry",
    "ModelVersion",
    "RegistryError",
    "S3Store",
    "VersionNotFound",
    "open_store",
]
