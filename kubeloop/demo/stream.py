"""Production traffic for the demo, laid out so the scenario starts at a known time.

The example generator's transactions are the production traffic. ``build_stream`` draws
``onset_seconds × rate`` rows from the days just before the scenario's onset and the rest
from the days after it, so at a steady rate the drift reaches the router exactly
``onset_seconds`` into the traffic. The days are replayed in order, one after another
(the onset is at midnight), and within a day the rows come in random order: replaying
a day of events in seconds would otherwise sweep the hour of day every few seconds, and
any short window of traffic (a retraining window, a reference sample) would look drifted.

A caller sends what a real caller knows: the transaction's request features and the
account (``requests``); the account profile comes from Feast's online store, which holds
the day's snapshot while the replay is in that day (``days`` and ``snapshots`` say which
snapshot is due when). ``instances`` are the same rows with the profile joined
point-in-time, as the offline store joins them for training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kubeloop.data import fraud


@dataclass
class ReplayStream:
    instances: list[dict]  # every feature, the account profile joined point-in-time
    labels: np.ndarray  # ground truth, revealed after the label delay
    onset_index: int  # first row drawn from after the scenario's onset
    scenario: str
    description: str
    # per row, beside the instance: the account (entity key) and transaction id, which a
    # training pipeline run on the labelled traffic needs as its dataset's key columns
    account_ids: np.ndarray | None = None
    transaction_ids: list[str] | None = None
    # what a caller sends: the request features and the entity key (the predictor looks
    # the profile up); the day (UTC midnight) each row belongs to; the account snapshots
    requests: list[dict] | None = None
    days: pd.Series | None = None  # datetime64[us, UTC] per row, nondecreasing
    snapshots: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.instances)


DAY = "_day"  # the UTC midnight of each row's event time


def _draw(frame: pd.DataFrame, n: int, rng: np.random.Generator, *, latest: bool) -> pd.DataFrame:
    """``n`` rows from whole days of ``frame`` nearest the onset (its ``latest`` days, else
    its earliest), the days in order and each day's rows shuffled."""
    if frame.empty:
        raise ValueError("the generated data has no rows on one side of the onset")
    sizes = frame[DAY].value_counts().sort_index(ascending=not latest)
    # the fewest days nearest the onset that hold n rows; every day when they do not
    days = list(sizes.index[: int(np.searchsorted(sizes.cumsum().to_numpy(), n)) + 1])
    pool = frame[frame[DAY].isin(days)]
    # without replacement while the days hold rows enough; the demo's duration is a choice
    chosen = pool.iloc[rng.choice(len(pool), size=n, replace=n > len(pool))]
    # days in order, each day's rows shuffled (a random tie-break under a stable sort)
    return chosen.assign(_draw=rng.random(n)).sort_values([DAY, "_draw"]).drop(columns="_draw")


def build_stream(
    scenario: str,
    *,
    rate: float,
    onset_seconds: float,
    duration_seconds: float,
    seed: int = 0,
    n_accounts: int = 800,
    population_seed: int | None = None,
) -> ReplayStream:
    from kubeloop.features.join import point_in_time_join

    total = int(np.ceil(rate * duration_seconds))
    before = int(round(rate * onset_seconds))
    days = max(4, math.ceil(2.2 * total / (2.0 * n_accounts)))  # ~2 transactions per account-day
    # Whole days on each side of the onset: a partial day over-represents its early hours.
    days += days % 2
    data = fraud.generate(scenario, days=days, n_accounts=n_accounts, seed=seed,
                          onset_fraction=0.5, population_seed=population_seed)  # fmt: skip
    start, end = pd.Timestamp(data.truth.start), pd.Timestamp(data.truth.end)
    frame = point_in_time_join(data)
    frame = frame.assign(**{DAY: frame["event_timestamp"].dt.floor("D")})
    # stationary has no onset: split where the others would start, nothing changes there
    onset = pd.Timestamp(data.truth.onset) if data.truth.onset else start + (end - start) / 2
    rng = np.random.default_rng(seed)
    pre = _draw(frame[frame["event_timestamp"] < onset], before, rng, latest=True)
    post = _draw(frame[frame["event_timestamp"] >= onset], total - before, rng, latest=False)
    rows = pd.concat([pre, post], ignore_index=True)
    schema = fraud.FRAUD_SCHEMA
    instances = _records(rows[list(schema.feature_names)])
    requests = _records(rows[[c.name for c in schema.request_features] + [schema.entity]])
    return ReplayStream(
        instances=instances,
        labels=rows[schema.label].to_numpy(dtype=int),
        onset_index=before,
        scenario=scenario,
        description=data.truth.description,
        account_ids=rows[schema.entity].to_numpy(dtype=np.int64),
        transaction_ids=rows["transaction_id"].astype(str).tolist(),
        requests=requests,
        days=rows[DAY],
        snapshots=data.accounts,
    )


def _records(frame: pd.DataFrame) -> list[dict]:
    records = frame.to_dict(orient="records")
    for row in records:  # numpy scalars do not serialise to JSON
        for key, value in row.items():
            if isinstance(value, np.generic):
                row[key] = value.item()
    return records
