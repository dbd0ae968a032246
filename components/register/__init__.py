"""The register stage: publish an immutable registry version with lineage."""
