"""Test helpers for code that trains: one Ray head per test session, and small splits.

``ray_head`` is a session-scoped pytest fixture (import it into a test module or
conftest). It starts a local head under the session's base temp folder, points
``KUBELOOP_RAY_ADDRESS`` at it so in-process code and kfp.local stage subprocesses
join the same instance, and stops exactly that head at the end. A second import of the
fixture (another directory) finds the recorded head and reuses it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from kubeloop.data import fraud


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from kubeloop.settings import get_settings
    from kubeloop.training.ray_runtime import start_local_head, stop_local_head

    home = Path(tmp_path_factory.getbasetemp()) / "kubeloop-ray-session"
    head = start_local_head(home)
    previous = os.environ.get("KUBELOOP_RAY_ADDRESS")
    os.environ["KUBELOOP_RAY_ADDRESS"] = head.address
    get_settings.cache_clear()
    try:
        yield head.address
    finally:
        if previous is None:
            os.environ.pop("KUBELOOP_RAY_ADDRESS", None)
        else:
            os.environ["KUBELOOP_RAY_ADDRESS"] = previous
        get_settings.cache_clear()
        stop_local_head(home)


def split_frames(
    days: float = 6.0, n_accounts: int = 300, seed: int = 0, eval_fraction: float = 0.25
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and eval frames like the features stage writes (point-in-time joined)."""
    from kubeloop.testing import joined_frame

    frame = joined_frame(fraud.generate("stationary", days=days, n_accounts=n_accounts, seed=seed))
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
    """A small bundle trained with plain torch (no Ray) with an F1 threshold, for stage tests."""
    from dataclasses import replace

    from kubeloop.testing import train_bundle
    from kubeloop.training.loop import best_threshold

    bundle = train_bundle(train, seed=seed, steps=steps)
    threshold = best_threshold(train["is_fraud"].to_numpy(), bundle.predict_proba(train))
    return replace(bundle, config=replace(bundle.config, threshold=threshold)).save(folder)
