"""Model registry: immutable, atomically published versions on a directory or S3."""

from kubeloop.registry.registry import (
    REFERENCE_FILE,
    ChecksumMismatch,
    ModelRegistry,
    ModelVersion,
    VersionNotFound,
    gate_passed,
)
from kubeloop.registry.stores import LocalStore, RegistryError, S3Store, open_store

__all__ = [
    "REFERENCE_FILE",
    "ChecksumMismatch",
    "LocalStore",
    "ModelRegistry",
    "ModelVersion",
    "RegistryError",
    "S3Store",
    "VersionNotFound",
    "gate_passed",
    "open_store",
]
