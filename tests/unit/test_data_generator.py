"""The fraud example generator: scenarios inject drift at the recorded onset, and only then."""

from __future__ import annotations

import pandas as pd
import pytest

from kubeloop.data.fraud import FRAUD_SCHEMA, SCENARIOS, generate, load_truth

DAYS, ACCOUNTS = 10, 400


@pytest.fixture(scope="module")
def runs():
    return {s: generate(s, days=DAYS, n_accounts=ACCOUNTS, seed=3) for s in SCENARIOS}


def _periods(data):
    """(early pre-onset, late pre-onset, post-onset) slices; onset defaults to 60% of the window."""
    tx = data.transactions
    onset = (
        pd.Timestamp(data.truth.onset) if data.truth.onset else tx["event_timestamp"].quantile(0.6)
    )
    pre, post = tx[tx["event_timestamp"] < onset], tx[tx["event_timestamp"] >= onset]
    mid = pre["event_timestamp"].quantile(0.5)
    return pre[pre["event_timestamp"] < mid], pre[pre["event_timestamp"] >= mid], post


def test_onset_is_recorded_for_drift_scenarios_only(runs):
    assert runs["stationary"].truth.onset is None and runs["stationary"].truth.kind == "none"
    start = pd.Timestamp(runs["covariate"].truth.start)
    for scenario in ("covariate", "concept", "label_shift"):
        onset = runs[scenario].truth.onset_time
        assert onset is not None
        assert pd.Timestamp(onset) == start + pd.Timedelta(days=DAYS * 0.6)
    assert {runs[s].truth.kind for s in SCENARIOS} == {"none", "covariate", "concept", "label"}


def test_covariate_shift_moves_inputs_after_onset_only(runs):
    early, late, post = _periods(runs["covariate"])
    assert late["amount"].median() / early["amount"].median() == pytest.approx(1.0, abs=0.15)
    assert post["amount"].median() / late["amount"].median() > 1.5
    assert post["distance_from_home_km"].median() / late["distance_from_home_km"].median() > 2.0
    assert (post["merchant_category"] == "online").mean() > (
        late["merchant_category"] == "online"
    ).mean()


def test_label_shift_raises_fraud_rate_after_onset_only(runs):
    early, late, post = _periods(runs["label_shift"])
    assert late["is_fraud"].mean() == pytest.approx(early["is_fraud"].mean(), abs=0.015)
    assert post["is_fraud"].mean() > 2.5 * late["is_fraud"].mean()
    # Inputs of legitimate traffic are unchanged by a prior shift.
    legit_late, legit_post = late[late["is_fraud"] == 0], post[post["is_fraud"] == 0]
    assert legit_post["amount"].median() / legit_late["amount"].median() == pytest.approx(
        1.0, abs=0.15
    )


def test_concept_drift_changes_the_fraud_pattern_after_onset_only(runs):
    early, late, post = _periods(runs["concept"])
    fraud = {
        name: part[part["is_fraud"] == 1]
        for name, part in (("early", early), ("late", late), ("post", post))
    }
    # Before onset fraud is large and far from home; after onset small, near home, in gaming/online.
    assert fraud["late"]["amount"].median() == pytest.approx(
        fraud["early"]["amount"].median(), rel=0.5
    )
    assert fraud["post"]["amount"].median() < 0.3 * fraud["late"]["amount"].median()
    assert (
        fraud["post"]["distance_from_home_km"].median()
        < fraud["late"]["distance_from_home_km"].median()
    )
    assert fraud["post"]["merchant_category"].isin(["gaming", "online"]).all()
    assert not fraud["late"]["merchant_category"].isin(["gaming", "online"]).all()


def test_stationary_has_no_shift(runs):
    early, late, post = _periods(runs["stationary"])
    for a, b in ((early, late), (late, post)):
        assert b["amount"].median() / a["amount"].median() == pytest.approx(1.0, abs=0.15)
        assert b["is_fraud"].mean() == pytest.approx(a["is_fraud"].mean(), abs=0.015)


def test_deterministic_by_seed():
    a = generate("covariate", days=2, n_accounts=50, seed=9)
    b = generate("covariate", days=2, n_accounts=50, seed=9)
    c = generate("covariate", days=2, n_accounts=50, seed=10)
    pd.testing.assert_frame_equal(a.transactions, b.transactions)
    pd.testing.assert_frame_equal(a.accounts, b.accounts)
    assert not a.transactions["amount"].equals(c.transactions["amount"])


def test_a_population_seed_keeps_the_customers_and_draws_new_transactions():
    trained = generate("stationary", days=2, n_accounts=50, seed=7)
    served = generate("stationary", days=3, n_accounts=50, seed=1, population_seed=7)
    first = trained.accounts.groupby("account_id")["account_age_days"].first()
    again = served.accounts.groupby("account_id")["account_age_days"].first()
    pd.testing.assert_series_equal(first, again)  # the same accounts, opened the same day
    assert (
        not trained.transactions["amount"].head(50).equals(served.transactions["amount"].head(50))
    )
    other = generate("stationary", days=3, n_accounts=50, seed=1)
    assert not other.accounts.groupby("account_id")["account_age_days"].first().equals(first)


def test_output_matches_schema_and_labels_arrive_after_events(runs):
    tx = runs["stationary"].transactions
    expected = [c.name for c in FRAUD_SCHEMA.source_columns]
    assert list(tx.columns) == expected
    assert str(tx["event_timestamp"].dtype) == "datetime64[us, UTC]"
    assert (tx["label_timestamp"] >= tx["event_timestamp"]).all()
    assert tx["transaction_id"].is_unique
    assert 0.015 < tx["is_fraud"].mean() < 0.05


def test_account_snapshots_summarise_only_the_past(runs):
    data = runs["stationary"]
    tx, snaps = data.transactions, data.accounts
    assert snaps["event_timestamp"].min() == pd.Timestamp(data.truth.start)
    account = tx["account_id"].value_counts().index[0]
    columns = ["event_timestamp", "amount"]
    mine = pd.concat([data.history, tx])[lambda f: f["account_id"] == account][columns]
    for _, snap in snaps[snaps["account_id"] == account].iloc[:6].iterrows():
        at = snap["event_timestamp"]
        month = mine[
            (mine["event_timestamp"] < at) & (mine["event_timestamp"] >= at - pd.Timedelta(days=30))
        ]
        last_day = month[month["event_timestamp"] >= at - pd.Timedelta(days=1)]
        assert snap["txn_count_24h"] == len(last_day)
        assert snap["avg_amount_30d"] == pytest.approx(month["amount"].mean(), abs=0.01)


def test_account_profiles_are_steady_from_the_first_day(runs):
    """The accounts' month of spending before the window is simulated: the first day's
    profiles look like the last day's, not like accounts with no past."""
    data = runs["stationary"]
    assert data.history["event_timestamp"].max() < pd.Timestamp(data.truth.start)
    assert data.history["event_timestamp"].min() >= pd.Timestamp(data.truth.start) - pd.Timedelta(
        days=30
    )
    snaps = data.accounts
    first = snaps[snaps["event_timestamp"] == snaps["event_timestamp"].min()]
    last = snaps[snaps["event_timestamp"] == snaps["event_timestamp"].max()]
    for column in ("avg_amount_30d", "txn_count_24h"):
        assert first[column].mean() == pytest.approx(last[column].mean(), rel=0.1), column
    assert first["txn_count_24h"].mean() > 1.0  # about 2 transactions per account-day
    assert first["avg_amount_30d"].std() == pytest.approx(last["avg_amount_30d"].std(), rel=0.15)


def test_write_and_load_truth(tmp_path, runs):
    folder = runs["concept"].write(tmp_path / "concept")
    assert load_truth(folder) == runs["concept"].truth
    assert {p.name for p in folder.iterdir()} == {
        "transactions.parquet",
        "account_features.parquet",
        "scenario.json",
        "schema.json",
    }


@pytest.mark.parametrize(
    "kwargs, message",
    [({"scenario": "tornado"}, "unknown scenario 'tornado'"), ({"days": 0}, "must be positive")],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(**kwargs)
