"""alibi-detect online detectors with thresholds cached on disk, and their encodings.

Configuring an online detector's thresholds for a target expected run time (ERT)
means simulating thousands of null streams, which takes seconds to minutes. Those
thresholds depend only on the reference sample and the detector's settings, so each
detector class here stores what ``_configure_thresholds`` computed under
``<cache_dir>/<key>.pkl`` (``key`` hashes the reference digest, the settings and the
alibi-detect version) and loads it instead on the next start.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kubeloop.drift.cusum import OnlineSlice

# Imported lazily: alibi-detect pulls torch and numba (about 3 s).
_ALIBI: dict[str, Any] = {}


def _alibi() -> dict[str, Any]:
    if not _ALIBI:
        import alibi_detect
        from alibi_detect.cd import CVMDriftOnline, FETDriftOnline
        from alibi_detect.cd.pytorch.mmd_online import MMDDriftOnlineTorch

        long_run = type("LongRunCVMDriftOnline", (CVMDriftOnline,), {
            "_configure_thresholds": _long_run_thresholds
        })  # fmt: skip
        _ALIBI.update(
            version=alibi_detect.__version__,
            cvm=_cached(long_run),
            fet=_cached(FETDriftOnline),
            mmd=_cached(MMDDriftOnlineTorch),
        )
    return _ALIBI


CVM_HORIZON = 6  # Cramér–von Mises null streams are simulated for 6 x the largest window


def _long_run_thresholds(self: Any) -> None:
    """Cramér–von Mises thresholds that hold the ERT past the first two windows.

    alibi-detect simulates null streams for ``2 * max_ws - 1`` steps and sets each step's
    threshold to the quantile that removes a ``beta`` share of the streams still alive,
    then keeps the last one for ever. Each stream has its own reference, so the streams
    that survive are those whose reference alarms least, and that last threshold, fitted
    to three or four streams above it, is too low for the steps after: at ERT 200 (windows
    20 and 60, 3 columns) most runs outlast the simulated steps and the run length was
    0.72 x ERT on Gaussian streams. Here the streams run for ``CVM_HORIZON * max_ws``
    steps, cut into segments where the set of full windows is the same (from each window
    size to the next, then up to ``2 * max_ws - 1``, then the long run). One threshold
    holds per segment, chosen so that of the streams alive at its start the share
    ``(1 - beta) ** steps`` has no statistic above it within the segment: a quantile of
    each stream's maximum, which thousands of streams decide, not a handful. Run length
    over reference draws (300 rows, 3 columns, Gaussian): 1.06 x ERT at ERT 200 (40 draws).
    """
    beta = 1 - (1 - self.fpr) ** (1 / self.n_features)
    settle, t_max = 2 * self.max_ws - 1, CVM_HORIZON * self.max_ws - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # windows not yet full are NaN
        top = np.nanmax(self._simulate_streams(t_max), axis=-1)  # (streams, steps)
    edges = sorted({*(ws - 1 for ws in self.window_sizes), settle, t_max})
    thresholds = np.full((settle + 1, 1), np.nan)
    alive = np.ones(len(top), dtype=bool)
    for first, end in zip(edges[:-1], edges[1:], strict=True):
        highest = top[:, first:end].max(axis=1)
        threshold = np.quantile(highest[alive], (1 - beta) ** (end - first))
        thresholds[first : min(end, settle + 1), 0] = threshold
        alive &= highest <= threshold
    self.thresholds = thresholds


def _cached(base: type) -> type:
    """A subclass of ``base`` whose threshold configuration is read from/written to disk."""

    def __init__(self, *args: Any, cache_path: Path | None = None, **kwargs: Any) -> None:
        self._cache_path = cache_path
        self.cache_hit = False
        base.__init__(self, *args, **kwargs)

    def _configure_thresholds(self) -> None:
        path = self._cache_path
        if path is not None and path.exists():
            with path.open("rb") as fh:
                vars(self).update(pickle.load(fh))
            self.cache_hit = True
            return
        before = dict(vars(self))
        base._configure_thresholds(self)
        computed = {k: v for k, v in vars(self).items() if k not in before or before[k] is not v}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename, so a crash never leaves a half-written cache entry.
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(computed, fh)
            os.replace(tmp, path)

    return type(
        f"Cached{base.__name__}",
        (base,),
        {"__init__": __init__, "_configure_thresholds": _configure_thresholds},
    )


def cache_key(reference_digest: str, detector: str, settings: dict[str, Any]) -> str:
    blob = json.dumps(
        {
            "ref": reference_digest,
            "detector": detector,
            "settings": settings,
            "alibi": _alibi()["version"],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _seed(seed: int) -> None:
    import torch

    np.random.seed(seed)
    torch.manual_seed(seed)


def _univariate_bootstraps(requested: int, ert: float, n_features: int, t_max: int) -> int:
    """Enough null streams that the per-feature quantile 1 - beta can be estimated to t_max."""
    beta = 1 - (1 - 1 / ert) ** (1 / n_features)
    survive = max((1 - 1 / ert) ** t_max, 0.01)  # streams left after removing those that alarmed
    return max(requested, int(np.ceil(2.0 / (beta * survive))))


def _step(det: Any, row: np.ndarray) -> tuple[Any, Any, int]:
    """One detector step: ``predict`` without its per-call bookkeeping.

    alibi-detect's ``predict`` also deep-copies the detector's metadata into a result dict
    and appends to ever-growing statistic arrays (only the last statistic is read again,
    by FET's smoothing); that is a tenth to a half of a step's cost.
    The statistic, threshold and decision are alibi-detect's own (``score``,
    ``get_threshold``, ``_check_drift``), with the same time index as ``predict`` uses.
    """
    stat = det.score(row)
    if hasattr(det, "window_sizes"):  # univariate: thresholds of the previous time step
        det.test_stats = stat[None, :, :]  # FET smooths with the previous statistic: keep it
        thr = det.get_threshold(det.t - 1)
        return stat, thr, int(det._check_drift(stat, thr))  # noqa: SLF001
    thr = det.get_threshold(det.t)
    return stat, thr, int(np.any(np.asarray(stat) > thr))


@dataclass
class OnlineDetector:
    """One online detector over some columns (alibi-detect's, or a CUSUM detector of
    ``kubeloop.drift.cusum``), with its step counter."""

    name: str
    columns: list[str]  # the feature label of each input column
    detector: Any
    setup_seconds: float
    cache_hit: bool
    every: int = 1  # feed one instance in ``every`` (sub-sampling; ERT counts detector steps)
    seen: int = 0
    steps: int = 0
    detected: bool = False
    detected_at_step: int | None = None
    statistic: np.ndarray | None = None  # per column, max over windows
    threshold: np.ndarray | None = None

    def update(self, rows: np.ndarray) -> None:
        """Feeds the rows (one instance each) the sub-sampling selects; latches detection."""
        det = self.detector
        if isinstance(det, OnlineSlice):  # the CUSUM detectors step a whole batch at once
            picked = rows[(-self.seen) % self.every :: self.every]
            self.seen += len(rows)
            if len(picked):
                alarm = det.run(picked)
                if alarm is not None and not self.detected:
                    self.detected, self.detected_at_step = True, self.steps + alarm + 1
                self.steps += len(picked)
                self.statistic = np.atleast_2d(det.statistic())
                self.threshold = np.atleast_1d(
                    np.asarray(det.get_threshold(det.t), dtype=np.float64)
                )
            return
        for row in rows:
            self.seen += 1
            if (self.seen - 1) % self.every:
                continue
            stat, thr, is_drift = _step(det, row)
            self.steps += 1
            self.statistic = np.atleast_2d(np.asarray(stat, dtype=np.float64))
            self.threshold = np.atleast_1d(np.asarray(thr, dtype=np.float64))
            if is_drift and not self.detected:
                self.detected, self.detected_at_step = True, self.steps
            self._trim()

    def _trim(self) -> None:
        # alibi-detect keeps every past instance and statistic; a service runs for weeks,
        # so keep only what the sliding windows read.
        det = self.detector
        keep = 4 * max(getattr(det, "max_ws", 0), getattr(det, "window_size", 0), 1)
        if self.steps % keep == 0:
            for attr in ("xs", "test_stats", "drift_preds"):
                value = getattr(det, attr, None)
                if value is not None and len(value) > keep:
                    setattr(det, attr, value[-keep:])

    def reset(self) -> None:
        self.detector.reset_state()
        self.seen = self.steps = 0
        self.detected, self.detected_at_step = False, None
        self.statistic = self.threshold = None

    def per_column(self) -> list[tuple[str, float, float]]:
        """(feature, statistic, threshold) per column; statistic is the max over windows."""
        if self.statistic is None:
            return []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # windows not yet full are NaN
            stat = np.nanmax(self.statistic, axis=0) if self.statistic.ndim == 2 else self.statistic
        thr = (
            np.broadcast_to(self.threshold, stat.shape)
            if self.threshold.size in (1, stat.size)
            else stat * np.nan
        )
        return [(c, float(s), float(t)) for c, s, t in zip(self.columns, stat, thr, strict=True)]


def build_detector(
    name: str,
    kind: str,
    x_ref: np.ndarray,
    columns: list[str],
    *,
    reference_digest: str,
    cache_dir: Path | None,
    ert: float,
    window_sizes: list[int],
    n_bootstraps: int,
    every: int = 1,
    seed: int = 0,
    **extra: Any,
) -> OnlineDetector:
    """Builds (or loads the thresholds of) one online detector of ``kind`` mmd|cvm|fet."""
    import time

    # The MMD detector runs in torch (float32); the univariate ones keep float64 (encoding.py).
    x_ref = np.ascontiguousarray(x_ref, dtype=np.float32 if kind == "mmd" else np.float64)
    n_features = x_ref.shape[1]
    settings: dict[str, Any] = {
        "kind": kind,
        "ert": ert,
        "window_sizes": window_sizes,
        "seed": seed,
        **extra,
    }
    if kind == "mmd":
        settings["n_bootstraps"] = n_bootstraps
        kwargs = {"window_size": window_sizes[0], "n_bootstraps": n_bootstraps, "device": "cpu"}
    else:
        t_max = 2 * max(window_sizes) - 1
        settings["n_bootstraps"] = _univariate_bootstraps(n_bootstraps, ert, n_features, t_max)
        kwargs = {"window_sizes": window_sizes, "n_bootstraps": settings["n_bootstraps"], **extra}
    if kind == "cvm":
        # Cramér–von Mises thresholds are distribution-free: alibi-detect simulates them from
        # Gaussian streams, so they depend on the reference size and settings only, never on the
        # data or the seed. One table serves every reference draw (and version) of that size.
        settings.pop("seed")
        settings["horizon"] = [CVM_HORIZON, "segments"]
        key = cache_key(f"any-{len(x_ref)}x{n_features}", kind, settings)
    else:
        key = cache_key(reference_digest, name, settings)
    path = cache_dir / f"{name}-{key}.pkl" if cache_dir else None
    _seed(seed)
    start = time.perf_counter()
    for attempt in range(3):
        try:
            det = _alibi()[kind](x_ref, ert=ert, verbose=False, cache_path=path, **kwargs)
            break
        except ValueError as exc:
            # alibi-detect 0.11.4's FET calibration can compute a negative "permit probability"
            # when the non-interpolated quantile overshoots; a different stream count avoids it.
            if kind != "fet" or "p < 0" not in str(exc) or attempt == 2:
                raise
            kwargs["n_bootstraps"] += 101
            _seed(seed + attempt + 1)
    return OnlineDetector(
        name=name,
        columns=columns,
        detector=det,
        setup_seconds=time.perf_counter() - start,
        cache_hit=det.cache_hit,
        every=every,
    )
