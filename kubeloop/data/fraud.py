"""The default example problem: card-transaction fraud detection.

The generator writes realistic event-level data: one row per card transaction with
request-time fields (amount, merchant category, hour, distance from home, foreign
flag, recent velocity) and a fraud label that becomes known only ``label_delay``
after the event (chargebacks arrive late). Account-level features (account age,
average spend, recent activity) live in a separate, daily-snapshotted table that
Feast serves as the ``account_profile`` feature view. The accounts are years old: their
spending over the 30 days before the window (the profiles' longest look-back) is simulated
too, so the first snapshots summarise a full month and the profiles are as steady on day
one as on day sixty.

Named scenarios inject drift at a known onset so later stages can measure detection
delay; the ground truth (kind, onset) is written next to the data as
``scenario.json``:

- ``stationary``: nothing changes;
- ``covariate``: inputs shift (larger amounts, farther from home, more online and
  electronics), while P(fraud | inputs) is unchanged;
- ``concept``: the fraud pattern changes (small daytime amounts near home in gaming
  and online, at high velocity), so a model trained before onset misses it;
- ``label_shift``: the fraud rate rises several-fold, P(inputs | fraud) unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from kubeloop.data.schema import ColumnSpec, DatasetSchema

Scenario = Literal["stationary", "covariate", "concept", "label_shift"]
SCENARIOS: tuple[str, ...] = ("stationary", "covariate", "concept", "label_shift")

MERCHANT_CATEGORIES = [
    "grocery",
    "restaurant",
    "fuel",
    "travel",
    "electronics",
    "online",
    "gaming",
    "jewelry",
]
_BASE_MIX = np.array([0.30, 0.20, 0.12, 0.06, 0.08, 0.15, 0.05, 0.04])
_SHIFTED_MIX = np.array([0.15, 0.12, 0.08, 0.10, 0.18, 0.27, 0.06, 0.04])
_CATEGORY_RISK = np.array([-0.6, -0.5, -0.4, 0.5, 0.9, 0.7, 0.3, 1.2])

TRANSACTIONS_FILE = "transactions.parquet"
ACCOUNTS_FILE = "account_features.parquet"
SCENARIO_FILE = "scenario.json"
SCHEMA_FILE = "schema.json"
HISTORY_DAYS = 30  # the profiles' longest look-back (avg_amount_30d)
_HISTORY_STREAM = 1  # the history's random stream, apart from the window's draws
# lognormal (mean, sigma) of an amount over the account's scale, and of fraud's extra factor
_SPEND = (0.0, 0.7)
_FRAUD_AMOUNT = (1.0, 0.5)

FRAUD_SCHEMA = DatasetSchema(
    name="card_transactions",
    feature_view="account_profile",
    feature_service="fraud_model_v1",
    columns=[
        ColumnSpec(name="transaction_id", dtype="string", role="id"),
        ColumnSpec(name="account_id", dtype="int", role="entity", min=0),
        ColumnSpec(name="event_timestamp", dtype="timestamp", role="timestamp"),
        ColumnSpec(
            name="amount", dtype="float", min=0.0, max=50_000.0, description="transaction amount"
        ),
        ColumnSpec(name="merchant_category", dtype="category", categories=MERCHANT_CATEGORIES),
        ColumnSpec(
            name="hour", dtype="int", min=0, max=23, description="local hour of the transaction"
        ),
        ColumnSpec(name="distance_from_home_km", dtype="float", min=0.0, max=20_000.0),
        ColumnSpec(name="is_foreign", dtype="int", min=0, max=1),
        ColumnSpec(
            name="txn_count_1h",
            dtype="int",
            min=0,
            max=500,
            description="velocity: card use in the last hour",
        ),
        ColumnSpec(
            name="account_age_days", dtype="float", source="feature_view", min=0.0, max=20_000.0
        ),
        ColumnSpec(
            name="avg_amount_30d", dtype="float", source="feature_view", min=0.0, max=50_000.0
        ),
        ColumnSpec(
            name="txn_count_24h", dtype="float", source="feature_view", min=0.0, max=10_000.0
        ),
        ColumnSpec(name="is_fraud", dtype="int", role="label", min=0, max=1),
        ColumnSpec(name="label_timestamp", dtype="timestamp", role="label_timestamp"),
    ],
)


@dataclass(frozen=True)
class ScenarioTruth:
    """What was injected, and when: the yardstick for detection delay."""

    scenario: str
    kind: str
    onset: str | None  # ISO-8601 UTC, None for stationary
    start: str
    end: str
    seed: int
    base_fraud_rate: float
    description: str

    @property
    def onset_time(self) -> datetime | None:
        return datetime.fromisoformat(self.onset) if self.onset else None


_DESCRIPTIONS = {
    "stationary": "no drift",
    "covariate": "inputs shift: amounts x1.8, farther from home, more online/electronics; P(y|x) unchanged",
    "concept": "fraud pattern changes to small daytime gaming/online bursts near home",
    "label_shift": "fraud rate rises 4x with P(x|y) unchanged",
}


@dataclass
class FraudData:
    transactions: pd.DataFrame
    accounts: pd.DataFrame
    truth: ScenarioTruth
    # the accounts' spending in the HISTORY_DAYS before the window (account_id,
    # event_timestamp, amount): only the snapshots see it; not written
    history: pd.DataFrame | None = None

    def write(self, folder: str | Path) -> Path:
        """Writes the three files (timestamps as ``datetime64[us, UTC]``) and the schema."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.transactions.to_parquet(folder / TRANSACTIONS_FILE, index=False)
        self.accounts.to_parquet(folder / ACCOUNTS_FILE, index=False)
        (folder / SCENARIO_FILE).write_text(json.dumps(asdict(self.truth), indent=2))
        (folder / SCHEMA_FILE).write_text(FRAUD_SCHEMA.to_json())
        return folder


def _utc(ts: datetime | str) -> datetime:
    ts = datetime.fromisoformat(ts) if isinstance(ts, str) else ts
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _account_population(rng: np.random.Generator, n_accounts: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "account_id": np.arange(1000, 1000 + n_accounts, dtype=np.int64),
            "opened_days_before": rng.gamma(2.0, 500.0, n_accounts),
            "spend_scale": rng.lognormal(3.6, 0.6, n_accounts),  # typical amount
            "activity": rng.gamma(2.0, 1.5, n_accounts),  # relative transaction rate
        }
    )


def _fraud_logit(
    amount_ratio: np.ndarray,
    distance: np.ndarray,
    hour: np.ndarray,
    category: np.ndarray,
    foreign: np.ndarray,
    velocity: np.ndarray,
    account_age: np.ndarray,
) -> np.ndarray:
    night = ((hour <= 4) | (hour >= 23)).astype(float)
    return (
        1.1 * np.log1p(amount_ratio)
        + 0.55 * np.log1p(distance / 10.0)
        + 0.9 * night
        + _CATEGORY_RISK[category]
        + 0.9 * foreign
        + 0.25 * velocity
        - 0.45 * np.log1p(account_age / 30.0)
    )


def generate(
    scenario: str = "stationary",
    *,
    start: datetime | str = "2026-01-01T00:00:00+00:00",
    days: float = 14.0,
    n_accounts: int = 2000,
    transactions_per_account_day: float = 2.0,
    onset_fraction: float = 0.6,
    onset: datetime | str | None = None,
    base_fraud_rate: float = 0.03,
    label_delay_hours: float = 6.0,
    seed: int = 0,
    population_seed: int | None = None,
) -> FraudData:
    """Generates transactions and daily account snapshots for one scenario.

    ``onset`` (or ``start + onset_fraction * days``) is when the drift begins; it is
    ignored for ``stationary``. Amounts of data scale with ``n_accounts * days``. The
    accounts are drawn from ``population_seed`` when given (else from ``seed``): the
    same customers as another run's data, with transactions of their own.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if days <= 0 or n_accounts <= 0:
        raise ValueError("days and n_accounts must be positive")
    rng = np.random.default_rng(seed)
    t0 = _utc(start)
    t_end = t0 + timedelta(days=days)
    onset_t = (
        None
        if scenario == "stationary"
        else _utc(onset)
        if onset
        else t0 + timedelta(days=days * onset_fraction)
    )

    accounts = _account_population(
        rng if population_seed is None else np.random.default_rng(population_seed), n_accounts
    )
    n = int(rng.poisson(n_accounts * days * transactions_per_account_day))
    n = max(n, 1)
    weights = accounts["activity"].to_numpy() / accounts["activity"].sum()
    idx = rng.choice(n_accounts, size=n, p=weights)
    offsets = np.sort(rng.uniform(0.0, days * 86400.0, n))
    ts = pd.to_datetime(t0) + pd.to_timedelta(offsets, unit="s")
    ts = ts.astype("datetime64[us, UTC]")
    after = np.zeros(n, dtype=bool) if onset_t is None else np.asarray(ts >= pd.Timestamp(onset_t))

    acc = accounts.iloc[idx].reset_index(drop=True)
    age = acc["opened_days_before"].to_numpy() + offsets / 86400.0
    spend = acc["spend_scale"].to_numpy()

    # Legitimate behaviour, with the covariate shift applied after onset.
    cov = after & (scenario == "covariate")
    mix = np.where(cov[:, None], _SHIFTED_MIX[None, :], _BASE_MIX[None, :])
    cum = mix.cumsum(axis=1)
    category = (rng.uniform(size=(n, 1)) > cum).sum(axis=1).clip(0, len(MERCHANT_CATEGORIES) - 1)
    amount = spend * rng.lognormal(*_SPEND, n) * np.where(cov, 1.8, 1.0)
    distance = rng.gamma(1.2, 8.0, n) * np.where(cov, 2.5, 1.0)
    hour_of_day = pd.DatetimeIndex(ts).hour.to_numpy()
    hour = ((hour_of_day + rng.integers(-1, 2, n)) % 24).astype(np.int64)
    foreign = (rng.uniform(size=n) < np.where(cov, 0.08, 0.03)).astype(np.int64)
    velocity = rng.poisson(0.6 + 0.4 * acc["activity"].to_numpy()).astype(np.int64)

    # Labels from the (pre-onset) fraud mechanism, calibrated to the base rate.
    logit = _fraud_logit(amount / spend, distance, hour, category, foreign, velocity, age)
    # Calibrated on the pre-onset population so the base rate holds before any drift.
    pre = ~after if (~after).any() else np.ones(n, dtype=bool)
    bias = np.quantile(logit[pre], 1.0 - base_fraud_rate)
    p = 1.0 / (1.0 + np.exp(-(logit - bias) * 2.2))
    p = p * base_fraud_rate / max(p[pre].mean(), 1e-9)
    if scenario == "label_shift":
        # Prior shift: draw more positives and negatives in the same P(x|y) by reweighting.
        p = np.where(after, np.clip(p * 4.0, 0, 0.95), p)
    fraud = rng.uniform(size=n) < np.clip(p, 0, 1)

    # Fraud rows look like fraud (heavier amounts, distance, night, foreign) before onset.
    f = fraud & ~(after & (scenario == "concept"))
    amount[f] *= rng.lognormal(*_FRAUD_AMOUNT, f.sum())
    distance[f] += rng.gamma(1.2, 20.0, f.sum())  # informative, not a giveaway (AUC ~0.9)
    foreign[f] = np.maximum(foreign[f], (rng.uniform(size=f.sum()) < 0.35).astype(np.int64))
    velocity[f] += rng.poisson(2.0, f.sum())
    if scenario == "concept":
        # New fraud pattern after onset: many small daytime bursts near home in gaming/online,
        # and the old fraud-looking transactions are now mostly legitimate (e.g. travel season).
        new = after & (rng.uniform(size=n) < base_fraud_rate * 1.5)
        fraud = np.where(after, new, fraud)
        category[new] = rng.choice([5, 6], size=new.sum())
        amount[new] = spend[new] * rng.lognormal(-1.2, 0.3, new.sum())
        distance[new] = rng.gamma(1.0, 2.0, new.sum())
        hour[new] = rng.integers(10, 18, new.sum())
        velocity[new] = rng.poisson(1.0, new.sum())
        foreign[new] = 0

    amount = np.round(np.clip(amount, 0.5, 49_999.0), 2)
    distance = np.round(np.clip(distance, 0.0, 19_999.0), 2)
    velocity = np.clip(velocity, 0, 500)
    delay = pd.to_timedelta(rng.exponential(label_delay_hours * 3600.0, n), unit="s")

    tx = pd.DataFrame(
        {
            "transaction_id": [f"tx-{seed}-{i:08d}" for i in range(n)],
            "account_id": acc["account_id"].to_numpy(),
            "event_timestamp": ts,
            "amount": amount,
            "merchant_category": pd.Categorical.from_codes(category, MERCHANT_CATEGORIES).astype(
                str
            ),
            "hour": hour,
            "distance_from_home_km": distance,
            "is_foreign": foreign,
            "txn_count_1h": velocity,
            "is_fraud": fraud.astype(np.int64),
            "label_timestamp": (ts + delay).astype("datetime64[us, UTC]"),
        }
    )
    history = _history(
        accounts, t0, n_accounts * transactions_per_account_day, base_fraud_rate,
        np.random.default_rng((seed, _HISTORY_STREAM)),
    )  # fmt: skip
    snapshots = account_snapshots(
        pd.concat([history, tx[list(history.columns)]]), accounts, t0, t_end
    )
    truth = ScenarioTruth(
        scenario=scenario,
        kind={
            "stationary": "none",
            "covariate": "covariate",
            "concept": "concept",
            "label_shift": "label",
        }[scenario],
        onset=onset_t.isoformat() if onset_t else None,
        start=t0.isoformat(),
        end=t_end.isoformat(),
        seed=seed,
        base_fraud_rate=base_fraud_rate,
        description=_DESCRIPTIONS[scenario],
    )
    return FraudData(transactions=tx, accounts=snapshots, truth=truth, history=history)


def _history(
    accounts: pd.DataFrame,
    t0: datetime,
    per_day: float,
    fraud_rate: float,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Each account's spending over the HISTORY_DAYS before ``t0``, at its own rate and
    scale, a ``fraud_rate`` share of it with fraud's heavier amounts: what the first
    snapshots summarise. Without it the 30-day averages would fill for a month, and any
    two periods of the first month would differ in them."""
    activity = accounts["activity"].to_numpy()
    counts = rng.poisson(per_day * activity / activity.sum() * HISTORY_DAYS)
    n = int(counts.sum())
    spend = np.repeat(accounts["spend_scale"].to_numpy(), counts)
    heavy = np.where(rng.uniform(size=n) < fraud_rate, rng.lognormal(*_FRAUD_AMOUNT, n), 1.0)
    amount = np.round(np.clip(spend * rng.lognormal(*_SPEND, n) * heavy, 0.5, 49_999.0), 2)
    offsets = rng.uniform(-HISTORY_DAYS * 86400.0, 0.0, n)
    ts = (pd.Timestamp(t0) + pd.to_timedelta(offsets, unit="s")).astype("datetime64[us, UTC]")
    return pd.DataFrame(
        {"account_id": np.repeat(accounts["account_id"].to_numpy(), counts),
         "event_timestamp": ts, "amount": amount}
    ).sort_values("event_timestamp", ignore_index=True)  # fmt: skip


def account_snapshots(
    tx: pd.DataFrame, accounts: pd.DataFrame, start: datetime, end: datetime
) -> pd.DataFrame:
    """Daily account-profile snapshots from ``start`` to ``end``, computed only from
    transactions before each snapshot (``tx`` may begin before ``start``: the history).

    Each row is stamped at 00:00 UTC of its day and summarises the history strictly
    before that instant, so joining it point-in-time never leaks the future.
    """
    first = min(pd.Timestamp(start), tx["event_timestamp"].min()).floor("D")
    days = pd.date_range(first, pd.Timestamp(end).ceil("D"), freq="D", tz="UTC")
    daily = (
        tx.assign(day=tx["event_timestamp"].dt.floor("D"))
        .groupby(["account_id", "day"])
        .agg(n=("amount", "size"), total=("amount", "sum"))
        .reset_index()
    )
    rows = []
    for acc_id, opened, scale in accounts[
        ["account_id", "opened_days_before", "spend_scale"]
    ].itertuples(index=False):
        rows.append(
            pd.DataFrame(
                {"account_id": acc_id, "event_timestamp": days, "opened": opened, "scale": scale}
            )
        )
    snap = pd.concat(rows, ignore_index=True)
    # Trailing sums over the previous 30 days / 1 day, excluding the snapshot day itself.
    grid = snap[["account_id", "event_timestamp"]].merge(
        daily.rename(columns={"day": "event_timestamp"}),
        how="left",
        on=["account_id", "event_timestamp"],
    )
    grid[["n", "total"]] = grid[["n", "total"]].fillna(0.0)
    grid = grid.sort_values(["account_id", "event_timestamp"])
    g = grid.groupby("account_id")
    n30 = g["n"].transform(lambda s: s.shift(1).rolling(30, min_periods=1).sum()).fillna(0.0)
    t30 = g["total"].transform(lambda s: s.shift(1).rolling(30, min_periods=1).sum()).fillna(0.0)
    n1 = g["n"].shift(1).fillna(0.0)
    snap = snap.sort_values(["account_id", "event_timestamp"]).reset_index(drop=True)
    grid = grid.reset_index(drop=True)
    elapsed = (snap["event_timestamp"] - pd.Timestamp(start)).dt.total_seconds() / 86400.0
    out = pd.DataFrame(
        {
            "account_id": snap["account_id"].astype(np.int64),
            "event_timestamp": snap["event_timestamp"].astype("datetime64[us, UTC]"),
            "account_age_days": np.round(snap["opened"] + elapsed, 3),
            # Before any history, the account's typical spend is the prior (its scale).
            "avg_amount_30d": np.round(
                np.where(n30.to_numpy() > 0, t30 / n30.clip(lower=1), snap["scale"]), 2
            ),
            "txn_count_24h": n1.to_numpy().astype(float),
        }
    )
    out["created"] = out["event_timestamp"]
    return out[out["event_timestamp"] >= pd.Timestamp(start).floor("D")].reset_index(drop=True)


def load_truth(folder: str | Path) -> ScenarioTruth:
    return ScenarioTruth(**json.loads((Path(folder) / SCENARIO_FILE).read_text()))
