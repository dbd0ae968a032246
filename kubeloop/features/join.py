"""The point-in-time join of the example's account profiles onto its transactions, in pandas.

Each transaction gets the account profile as it was at the transaction's event time
(the latest profile row at or before it): no value from the future leaks into training.
The Feast offline store does the same join in the pipeline (``training_frame``); this
one serves paths that must not pay for a Feast repository (the quick trainer, the demo's
caller stream, scenario tools). Unlike the feature view it applies no TTL: the example's
profiles are refreshed more often than the view's two-day TTL.
"""

from __future__ import annotations

import pandas as pd

from kubeloop.data import fraud


def point_in_time_join(data: fraud.FraudData) -> pd.DataFrame:
    """Transactions with the account-profile features as of each event (no future leakage)."""
    tx = data.transactions.sort_values("event_timestamp")
    view = [c.name for c in fraud.FRAUD_SCHEMA.view_features]
    accounts = data.accounts.sort_values("event_timestamp")[
        ["account_id", "event_timestamp", *view]
    ]
    return pd.merge_asof(
        tx, accounts, on="event_timestamp", by="account_id", direction="backward"
    ).reset_index(drop=True)
