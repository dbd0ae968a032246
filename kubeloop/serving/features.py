"""Feast online features for entity-key requests (the KServe transformer pattern).

One batched online lookup per request (:class:`kubeloop.features.online.OnlineFeatures`,
one online-store read per feature view) for the unique entity keys in it. An entity the
online store does not know is a client error (``unknown_entity``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kubeloop.data.schema import DatasetSchema
from kubeloop.serving.inputs import RequestRejected


class OnlineFeatureLookup:
    def __init__(self, store_dir: str | Path, schema: DatasetSchema) -> None:
        from kubeloop.features.online import OnlineFeatures

        if not schema.feature_service:
            raise ValueError("the schema names no feature service to look features up in")
        self.online = OnlineFeatures(
            store_dir, feature_service=schema.feature_service, entity=schema.entity
        )
        self.entity = schema.entity
        self.names = [c.name for c in schema.view_features]
        missing = set(self.names) - set(self.online.feature_names)
        if missing:
            raise ValueError(f"feature service {schema.feature_service!r} lacks {sorted(missing)}")

    def lookup(self, entity_ids: list[Any]) -> dict[Any, dict[str, Any]]:
        """Feature values by entity key; raises ``RequestRejected`` for unknown keys."""
        keys = list(dict.fromkeys(entity_ids))
        found: dict[Any, dict[str, Any]] = {}
        missing = []
        for key, row in zip(keys, self.online.get(keys), strict=True):
            values = {name: row[name] for name in self.names}
            if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values.values()):
                missing.append(key)
            found[key] = {k: float(v) if v is not None else None for k, v in values.items()}
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
