"""Feast online features for entity-key requests (the KServe transformer pattern).

One batched ``get_online_features`` call per request, for the unique entity keys in it.
An entity the online store does not know is a client error (``unknown_entity``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubeloop.data.schema import DatasetSchema
from kubeloop.serving.inputs import RequestRejected


class OnlineFeatureLookup:
    def __init__(self, repo_path: str | Path, schema: DatasetSchema) -> None:
        from feast import FeatureStore

        if not schema.feature_view:
            raise ValueError("the schema names no feature view to look features up in")
        self.store = FeatureStore(repo_path=str(repo_path))
        self.entity = schema.entity
        self.names = [c.name for c in schema.view_features]
        self.refs = [f"{schema.feature_view}:{name}" for name in self.names]

    def lookup(self, entity_ids: list[Any]) -> dict[Any, dict[str, Any]]:
        """Feature values by entity key; raises ``RequestRejected`` for unknown keys."""
        keys = list(dict.fromkeys(entity_ids))
        result = self.store.get_online_features(
            features=self.refs, entity_rows=[{self.entity: k} for k in keys]
        ).to_dict()
        found: dict[Any, dict[str, Any]] = {}
        missing = []
        for j, key in enumerate(keys):
            values = {name: result[name][j] for name in self.names}
            if any(v is None for v in values.values()):
                missing.append(key)
            found[key] = values
        if missing:
            raise RequestRejected(
                "unknown_entity",
                f"the online store has no features for {self.entity} {missing[:10]}",
            )
        return found

    def enrich(self, instances: list[dict[str, Any]], rows: list[int]) -> None:
        """Fills the feature-view features of ``instances[rows]`` in place."""
        if not rows:
            return
        features = self.lookup([instances[i][self.entity] for i in rows])
        for i in rows:
            instances[i].update(features[instances[i][self.entity]])
