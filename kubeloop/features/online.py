"""Online feature lookups for serving: one batched Feast call per request.

The response is read as plain columns (``to_dict``): building a DataFrame from it
(``to_df``) costs about as much again as the lookup itself (bench/serving, Feast).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
        from feast import FeatureStore

        store_dir = Path(store_dir)
        if not (store_dir / "feature_store.yaml").exists():
            raise FileNotFoundError(
                f"{store_dir} is not a Feast repository (no feature_store.yaml)"
            )
        self.store = FeatureStore(repo_path=str(store_dir))
        self.service = self.store.get_feature_service(feature_service)
        self.entity = entity
        self.feature_names = [
            f.name for proj in self.service.feature_view_projections for f in proj.features
        ]

    def get(self, account_ids: list[int]) -> list[dict[str, Any]]:
        """One row per requested id, in order: the entity key and every feature (None when unknown)."""
        if not account_ids:
            return []
        rows = [{self.entity: int(a)} for a in account_ids]
        columns = self.store.get_online_features(features=self.service, entity_rows=rows).to_dict()
        names = [self.entity, *self.feature_names]
        return [
            dict(zip(names, values, strict=True))
            for values in zip(*(columns[n] for n in names), strict=True)
        ]
