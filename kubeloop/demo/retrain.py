"""The window of labelled production traffic a retraining run learns from.

The traffic replayer keeps the labelled traffic in ``labelled.parquet`` (features, label,
``labelled_at``, ``sent_at``, account and transaction ids). With ``window="recent"`` a run
takes the last ``data_window`` of it; with ``window="fresh"`` it waits for
``data_window`` of traffic labelled after it started, so a run started by drift learns
from the drifted traffic only (:func:`load_window`). ``corrupt_labels`` inverts the
labels, as a broken label join upstream would: the demo's deliberately worse candidate.
"""

from __future__ import annotations

import time
from pathlib import Path

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


def corrupt_labels(frame: pd.DataFrame, label: str) -> pd.DataFrame:
    out = frame.copy()
    out[label] = 1 - out[label].to_numpy()
    return out
