"""The yardstick for a retrained model: the best model one could train for the new world.

An oracle is the training pipeline's own trainer (Ray Train, ``train_model``) on plenty of
post-drift data from the generator: the same scenario and customers (account population)
as the demo's traffic, another seed's transactions, every row after the onset (about
16,000 over ten days at the demo's 800 accounts). It is scored on the labelled traffic the
promoted version served, so the bench's "gap to oracle" is how far the loop's model is
from what more post-drift data would have given.
"""

from __future__ import annotations

import pandas as pd

ORACLE_DAYS = 10
ORACLE_EPOCHS = 20
ORACLE_BATCH_SIZE = 256


def oracle_frame(
    scenario: str, *, seed: int, n_accounts: int, population_seed: int
) -> pd.DataFrame:
    """Post-drift rows of ``scenario`` (features joined point-in-time) for one oracle."""
    from kubeloop.data import fraud
    from kubeloop.features.join import point_in_time_join

    # one warm-up day (the accounts' histories fill) before the onset, then ORACLE_DAYS
    days = ORACLE_DAYS + 1
    data = fraud.generate(scenario, days=days, n_accounts=n_accounts, seed=seed,
                          population_seed=population_seed, onset_fraction=1 / days)  # fmt: skip
    if data.truth.onset is None:
        raise ValueError(f"scenario {scenario!r} has no drift onset: no post-drift world")
    frame = point_in_time_join(data)
    onset = pd.Timestamp(data.truth.onset)
    return frame[frame["event_timestamp"] >= onset].reset_index(drop=True)


def train_oracle(scenario: str, *, seed: int, n_accounts: int, population_seed: int):
    """The oracle for ``scenario`` (a ``ModelBundle``, its decision threshold chosen on its
    own validation rows)."""
    from kubeloop.data.fraud import FRAUD_SCHEMA as schema
    from kubeloop.demo.config import LoopConfig
    from kubeloop.training import TrainParams
    from kubeloop.training.ray_train import train_model

    frame = oracle_frame(
        scenario, seed=seed, n_accounts=n_accounts, population_seed=population_seed
    )
    params = TrainParams(
        epochs=ORACLE_EPOCHS, batch_size=ORACLE_BATCH_SIZE, seed=seed,
        members=LoopConfig.pipeline_members,  # the retraining runs' ensemble
    )  # fmt: skip
    return train_model(frame, schema, params, log=lambda _: None).bundle


def accuracy(bundle, rows: pd.DataFrame) -> float:
    """Accuracy of ``bundle`` on ``rows`` (features and label) at its own threshold."""
    _, classes = bundle.predict(rows)
    return float((classes == rows[bundle.schema.label].to_numpy()).mean())
