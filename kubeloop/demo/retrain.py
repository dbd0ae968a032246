"""The demo's retraining runner: learn from the recent window of labelled production traffic.

The operator's local driver calls ``train_on_recent_window`` in a run subprocess
(``KUBELOOP_OPERATOR_LOCAL_RUNNER=kubeloop.demo.retrain:train_on_recent_window``). The
traffic replayer keeps the labelled traffic in ``labelled.parquet`` (features, label,
``labelled_at``). With ``window="recent"`` the run takes the last ``data_window`` of it;
with ``window="fresh"`` it waits for ``data_window`` of traffic labelled after it started,
so a run started by drift learns from the drifted traffic only. It holds out the latest
30 % for evaluation and the reference sample and publishes a complete registry version.
With ``replay_fraction`` that share of the training rows is replayed from the
champion's data (``replay_version``'s reference sample, :mod:`kubeloop.data.replay`);
evaluation stays on the window. ``quality="corrupt"`` inverts the labels first (as a
broken label join would) — a deliberately worse candidate that passes the offline gate,
because its evaluation labels are corrupted too, and must be caught by the canary
analysis on live traffic.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from kubeloop.local.wait import wait_until
from kubeloop.operators.crd import window_seconds

LABELLED_FILE = "labelled.parquet"
MIN_ROWS = 200


def recent_window(frame: pd.DataFrame, seconds: float, now: float | None = None) -> pd.DataFrame:
    """Rows labelled within the last ``seconds`` (by ``labelled_at``)."""
    if "labelled_at" not in frame.columns:
        raise ValueError("labelled traffic has no labelled_at column")
    now = time.time() if now is None else now
    return frame[frame["labelled_at"] >= now - seconds].reset_index(drop=True)


def fresh_window(
    path: Path, seconds: float, *, timeout: float, poll: float = 1.0, start: float | None = None
) -> pd.DataFrame:
    """Waits until ``seconds`` of traffic labelled after ``start`` (default: now) are in
    ``path``; returns those rows."""
    start = time.time() if start is None else start

    def fresh() -> tuple[pd.DataFrame] | None:  # a tuple: truthy even for an empty frame
        frame = pd.read_parquet(path) if path.exists() else pd.DataFrame()
        if not len(frame) or float(frame["labelled_at"].max()) < start + seconds:
            return None
        chosen = frame[(frame["labelled_at"] >= start) & (frame["labelled_at"] <= start + seconds)]
        return (chosen.reset_index(drop=True),)

    (chosen,) = wait_until(fresh, timeout=seconds + timeout, interval=poll,
                           what=f"{seconds:.0f}s of fresh labelled traffic in {path}")  # fmt: skip
    return chosen


def load_window(labelled_traffic: str | Path, data_window: str, window: str) -> pd.DataFrame:
    """The labelled rows a run learns from: the last ``data_window`` (``recent``) or the
    next ``data_window`` labelled after the run started (``fresh``); at least MIN_ROWS."""
    if window not in ("recent", "fresh"):
        raise ValueError(f"window must be recent or fresh, got {window!r}")
    path = Path(labelled_traffic)
    if not path.exists():
        raise FileNotFoundError(f"no labelled traffic at {path}")
    seconds = window_seconds(data_window)
    if window == "fresh":
        frame = fresh_window(path, seconds, timeout=max(30.0, seconds))
    else:
        frame = recent_window(pd.read_parquet(path), seconds)
    if len(frame) < MIN_ROWS:
        raise ValueError(
            f"only {len(frame)} labelled rows in the {window} {data_window} of {path}; "
            f"need {MIN_ROWS}"
        )
    return frame


def window_bounds(frame: pd.DataFrame) -> dict[str, str]:
    """Start and end (UTC, ISO 8601) of the traffic a run learned from, by prediction time."""
    column = "sent_at" if "sent_at" in frame.columns else "labelled_at"
    times = pd.to_datetime(frame[column], unit="s", utc=True)
    return {
        "start": times.min().floor("us").isoformat(),
        "end": times.max().floor("us").isoformat(),
    }


def corrupt_labels(frame: pd.DataFrame, label: str) -> pd.DataFrame:
    out = frame.copy()
    out[label] = 1 - out[label].to_numpy()
    return out


def train_on_recent_window(
    model_name: str,
    registry_uri: str,
    labelled_traffic: str,
    data_window: str = "40s",
    window: str = "recent",
    seed: int = 1,
    quality: str = "good",
    run_name: str = "",
    steps: int = 300,
    target_positive_rate: float = 0.0,
    replay_fraction: float = 0.0,
    replay_version: str = "",
    **_: Any,
):
    from kubeloop.data import fraud
    from kubeloop.data.replay import load_replay
    from kubeloop.registry import ModelRegistry
    from kubeloop.training.quick import train_and_publish

    if quality not in ("good", "corrupt"):
        raise ValueError(f"quality must be good or corrupt, got {quality!r}")
    schema = fraud.FRAUD_SCHEMA
    path = Path(labelled_traffic)
    frame = load_window(path, data_window, window)
    if quality == "corrupt":
        frame = corrupt_labels(frame, schema.label)
    cut = int(len(frame) * 0.7)
    registry = ModelRegistry(registry_uri)
    train = frame.iloc[:cut][[*schema.feature_names, schema.label]]
    replay = None
    if float(replay_fraction) > 0:
        replay = load_replay(
            registry, model_name, replay_version, schema,
            window_rows=cut, fraction=float(replay_fraction), seed=int(seed),
        )  # fmt: skip
        train = pd.concat([replay.rows, train], ignore_index=True)
        print(f"replaying {len(replay.rows)} rows of {model_name} {replay_version}'s data "
              f"beside {cut} window rows")  # fmt: skip
    lineage = {
        "data_hash": f"labelled-traffic-{len(frame)}-{float(frame['labelled_at'].max()):.3f}",
        "row_count": len(frame),
        "pipeline_run_id": run_name or f"recent-window-{int(time.time())}",
        "pipeline_name": __name__,
        "parameters": {
            "data_window": data_window,
            "window": window,
            "seed": int(seed),
            "quality": quality,
            **({"target_positive_rate": target_positive_rate} if target_positive_rate else {}),
        },
        "code_version": "kubeloop.demo",
        "source_uri": str(path),
        "window": window_bounds(frame),
        **({"replay": replay.lineage()} if replay is not None else {}),
    }
    return train_and_publish(
        registry,
        model_name,
        train,
        frame.iloc[cut:],
        seed=int(seed),
        steps=int(steps),
        lineage=lineage,
        min_accuracy=0.5,
        target_positive_rate=float(target_positive_rate),
    )
