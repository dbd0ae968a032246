"""Test helpers for code that trains: small point-in-time joined splits and bundles."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kubeloop.data import fraud
from kubeloop.features.join import point_in_time_join


def split_frames(
    days: float = 6.0, n_accounts: int = 300, seed: int = 0, eval_fraction: float = 0.25
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and eval frames like the features stage writes (point-in-time joined)."""
    frame = point_in_time_join(
        fraud.generate("stationary", days=days, n_accounts=n_accounts, seed=seed)
    )
    cut = frame["event_timestamp"].quantile(1.0 - eval_fraction)
    return (
        frame[frame["event_timestamp"] < cut].reset_index(drop=True),
        frame[frame["event_timestamp"] >= cut].reset_index(drop=True),
    )


def write_split(frame: pd.DataFrame, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / "data.parquet", index=False)
    return folder


def saved_bundle(train: pd.DataFrame, folder: Path, *, seed: int = 0, steps: int = 150) -> Path:
    """A small bundle trained with plain torch (no Ray) with an accuracy threshold, for stage tests."""
    from dataclasses import replace

    from kubeloop.training.loop import best_threshold
    from kubeloop.training.quick import train_bundle

    bundle = train_bundle(train, seed=seed, steps=steps)
    threshold = best_threshold(train["is_fraud"].to_numpy(), bundle.predict_proba(train))
    return replace(bundle, config=replace(bundle.config, threshold=threshold)).save(folder)
