"""Online feature lookups for serving: one batched online-store read per feature view.

The lookup reads through the Feast online store's own interface
(``OnlineStore.online_read``: SQLite here, Redis on a cluster, as ``feature_store.yaml``
configures) with the feature service's views and features resolved once, at start.
``FeatureStore.get_online_features`` resolves feature references, builds request and
response protos and converts the response on every call: about 1.7 ms of CPU per
request on this machine against a few hundredths of a millisecond for the read itself
(bench/serving, ``b-feast``). The values and the order are the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubeloop.features.feast_import import load_feast


class OnlineFeatures:
    """Reads a feature service's values for a batch of accounts from a prepared store.

    ``store_dir`` is a Feast working folder made by
    :func:`kubeloop.features.store.prepare_feature_store` (``feature_store.yaml`` inside).
    """

    def __init__(
        self,
        store_dir: str | Path,
        feature_service: str = "fraud_model_v1",
        entity: str = "account_id",
    ):
        load_feast()
        from feast import FeatureStore
        from feast.infra.online_stores.helpers import get_online_store_from_config
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values

        store_dir = Path(store_dir)
        if not (store_dir / "feature_store.yaml").exists():
            raise FileNotFoundError(
                f"{store_dir} is not a Feast repository (no feature_store.yaml)"
            )
        self.store = FeatureStore(repo_path=str(store_dir))
        self.service = self.store.get_feature_service(feature_service)
        self.entity = entity
        self._online = get_online_store_from_config(self.store.config.online_store)
        # A file on this machine (SQLite): a read costs hundredths of a millisecond.
        self.local = self.store.config.online_store.type == "sqlite"
        self._views = []  # (feature view, its features the service projects)
        value_types = set()
        for projection in self.service.feature_view_projections:
            view = self.store.get_feature_view(projection.name)
            value_types |= {
                c.dtype.to_value_type() for c in view.entity_columns if c.name == entity
            }
            self._views.append((view, [f.name for f in projection.features]))
        if len(value_types) != 1:
            raise ValueError(
                f"feature service {feature_service!r} is not keyed by {entity!r} alone"
            )
        self._value_type = value_types.pop()
        self.feature_names = [name for _, names in self._views for name in names]
        # resolved here, not per request: get() runs on the predictor's request path
        self._entity_key, self._to_proto = EntityKey, python_values_to_proto_values
        self._to_python = feast_value_type_to_python_type

    def get(self, account_ids: list[int]) -> list[dict[str, Any]]:
        """One row per requested id, in order: the entity key and every feature (None when unknown)."""
        if not account_ids:
            return []
        ids = [int(a) for a in account_ids]
        values = self._to_proto(ids, self._value_type)
        keys = [self._entity_key(join_keys=[self.entity], entity_values=[v]) for v in values]
        rows: list[dict[str, Any]] = [{self.entity: a} for a in ids]
        for view, names in self._views:
            found = self._online.online_read(self.store.config, view, keys, names)
            for row, (_, features) in zip(rows, found, strict=True):
                for name in names:
                    value = (features or {}).get(name)
                    row[name] = None if value is None else self._to_python(value)
        return rows
