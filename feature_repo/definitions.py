"""Feast definitions of kubeloop's example problem (card-transaction fraud).

``account_profile`` serves daily account snapshots (see
``kubeloop.data.fraud.account_snapshots``) by ``account_id``; the feature service
``fraud_model_v1`` is the versioned set of features the fraud model reads, for
training (point-in-time joins) and for serving (online lookups) alike.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, Project
from feast.types import Float64
from feast.value_type import ValueType

project = Project(name="kubeloop", description="kubeloop: fraud detection features")

account = Entity(
    name="account",
    join_keys=["account_id"],
    value_type=ValueType.INT64,
    description="a card account",
)

# Relative to the repository root; the cluster config points the same name at object storage.
account_features_source = FileSource(
    name="account_features_source",
    path="data/account_features.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="daily account snapshots, each summarising history strictly before its timestamp",
)

account_profile = FeatureView(
    name="account_profile",
    entities=[account],
    # Snapshots are daily; two days tolerates one missed snapshot before values go stale.
    ttl=timedelta(days=2),
    schema=[
        Field(name="account_age_days", dtype=Float64, description="days since the account opened"),
        Field(
            name="avg_amount_30d", dtype=Float64, description="mean amount over the last 30 days"
        ),
        Field(
            name="txn_count_24h", dtype=Float64, description="transactions over the previous day"
        ),
    ],
    online=True,
    source=account_features_source,
    tags={"owner": "kubeloop"},
)

fraud_model_v1 = FeatureService(
    name="fraud_model_v1",
    features=[account_profile],
    description="features of the fraud model, version 1",
    tags={"model": "fraud-detector"},
)
