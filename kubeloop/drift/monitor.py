"""The drift state of one watched model version: detectors, live quality, recent window.

Pure of HTTP: the service validates events and hands paired rows to the detector
worker process (``kubeloop.drift.worker``), which owns these objects and calls
``observe``/``feedback`` from one thread and sends ``snapshot`` back to the service.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kubeloop.drift.config import DetectorSettings
from kubeloop.drift.cusum import BernoulliCusum, ChartDetector, ProfileSplitDetector
from kubeloop.drift.detectors import OnlineDetector, build_detector
from kubeloop.drift.encoding import Encoder
from kubeloop.drift.estimate import ConfidenceEstimator, PriorShift
from kubeloop.drift.indicators import Categories, Distance, QuantileBins
from kubeloop.drift.profiles import ProfileMemory, first_rows
from kubeloop.drift.reference import FeatureSpec, Reference


def class_columns(predictions: np.ndarray) -> np.ndarray:
    """Predicted classes as the label-shift detector reads them: ``[positive, negative]``
    indicator columns, so a one-sided test per column covers both directions."""
    positive = (np.asarray(predictions).ravel() == 1).astype(np.float32)
    return np.stack([positive, 1.0 - positive], axis=1)


def _alibi_detectors(
    reference: Reference,
    s: DetectorSettings,
    encoder: Encoder,
    errors: np.ndarray,
    rows: Any,
    common: dict[str, Any],
) -> dict[str, OnlineDetector]:
    """The input, score and error-rate detectors of ``method: alibi``: alibi-detect's online
    MMD, Cramér–von Mises and Fisher exact tests, thresholds simulated (and cached)."""
    frame, online = reference.frame, {}
    if s.mmd:
        online["mmd"] = build_detector(
            "mmd", "mmd", encoder.mmd(rows(s.mmd_reference_rows)), ["_all"],
            window_sizes=[s.mmd_window], n_bootstraps=s.mmd_bootstraps, every=s.mmd_every,
            **{**common, "ert": s.ert_of("mmd")},
        )  # fmt: skip
    uni = {"window_sizes": list(s.univariate_windows), "n_bootstraps": s.univariate_bootstraps}
    if s.univariate and s.cvm and encoder.cvm_columns:
        online["cvm"] = build_detector(
            "cvm", "cvm", encoder.cvm(rows(s.cvm_reference_rows)), encoder.cvm_columns,
            every=s.univariate_every, **uni, **{**common, "ert": s.ert_of("cvm")},
        )  # fmt: skip
    if s.univariate and s.fet and encoder.fet_columns:
        online["fet"] = build_detector(
            "fet", "fet", encoder.fet(frame), encoder.fet_columns,
            every=s.univariate_every, alternative="greater", **uni,
            **{**common, "ert": s.ert_of("fet")},
        )  # fmt: skip
    if s.prediction:
        scores = encoder.scores(rows(s.cvm_reference_rows)["prediction_score"].to_numpy())
        online["prediction"] = build_detector(
            "prediction", "cvm", scores, ["_all"], every=s.univariate_every, **uni,
            **{**common, "ert": s.ert_of("prediction")},
        )  # fmt: skip
    if s.error_rate:
        online["error_rate"] = build_detector(
            "error_rate", "fet", errors, ["_all"], window_sizes=list(s.error_windows),
            n_bootstraps=s.univariate_bootstraps, alternative="greater",
            **{**common, "ert": s.ert_of("error_rate")},
        )  # fmt: skip
    return online


def _profile_split(
    frame: pd.DataFrame, spec: FeatureSpec, enc: Encoder, s: DetectorSettings, ert: float
) -> ChartDetector | ProfileSplitDetector:
    """The per-feature charts of ``method: cusum`` with the profile's features read once per
    profile: their intervals and rates counted on the reference's first row of each
    profile, the request features' on every reference row."""
    x = enc.cvm(frame)
    cols = enc.cvm_columns
    profile_cols = np.asarray([i for i, c in enumerate(cols) if c in spec.profile])
    row_cols = np.asarray([i for i, c in enumerate(cols) if c not in spec.profile])
    first = first_rows(frame, spec)
    parts = [
        QuantileBins.fit(x[rows][:, picked], s.bins) if len(picked) else None
        for rows, picked in ((slice(None), row_cols), (first, profile_cols))
    ]
    parts = [p if p is not None and len(p.rates) else None for p in parts]
    if all(p is None for p in parts):  # nothing to chart: the usual error, naming why
        return ChartDetector(QuantileBins.fit(x, s.bins), ert=ert, odds_ratio=s.odds_ratio)
    return ProfileSplitDetector(
        parts[0], parts[1], row_cols, profile_cols, float(first.mean()), ert, s.odds_ratio
    )


@dataclass
class DetectorView:
    """One exported row: detector, feature, statistic, threshold, drift flag."""

    detector: str
    feature: str
    statistic: float
    threshold: float
    detected: bool


@dataclass
class VersionMonitor:
    reference: Reference
    settings: DetectorSettings
    encoder: Encoder
    online: dict[str, OnlineDetector]
    setup_seconds: float
    prior_shift: PriorShift  # the reference's confusion matrix: the label-shift evidence
    reset_at: float = field(default_factory=time.time)
    samples: int = 0
    feedback_correct: int = 0
    feedback_incorrect: int = 0
    latched: dict[tuple[str, str], bool] = field(default_factory=dict)
    recent: deque = field(default_factory=deque)  # raw rows for the batch report
    quality: deque = field(
        default_factory=deque
    )  # (label, score, prediction) of the latest feedback
    # Accuracy before labels: the recalibrated confidence of the latest predictions.
    estimator: ConfidenceEstimator | None = None
    estimator_error: str | None = None  # why there is no estimator (the reference's problem)
    confidences: deque = field(default_factory=deque)
    # Label shift: the reference's confusion matrix and the latest predicted classes.
    classes: deque = field(default_factory=deque)
    skipped: dict[str, str] = field(default_factory=dict)  # detector -> why it is not built
    # The entity profiles seen, when the per-feature charts read profiles once each.
    profiles: ProfileMemory | None = None
    # Drift explained: the cached batch test and when it ran (monotonic seconds).
    _tabular: tuple[float, Any] | None = None
    _explained: tuple[float, int, dict[str, Any]] | None = None  # (when, samples, result)

    @property
    def model(self) -> str:
        return self.reference.model

    @property
    def version(self) -> str:
        return self.reference.version

    @classmethod
    def build(
        cls, reference: Reference, settings: DetectorSettings, cache_dir: Path | None
    ) -> VersionMonitor:
        """Encodes the reference and builds (or loads from cache) every enabled detector."""
        start = time.perf_counter()
        frame, spec, s = reference.frame, reference.spec, settings
        rng = np.random.default_rng(s.seed)
        encoder = Encoder.fit(spec, frame, seed=s.seed, untie=s.method == "alibi")
        common = {
            "reference_digest": reference.digest,
            "cache_dir": cache_dir,
            "ert": s.ert,
            "seed": s.seed,
        }

        def rows(n: int) -> pd.DataFrame:
            return frame.iloc[np.sort(rng.permutation(len(frame))[: min(n, len(frame))])]

        online: dict[str, OnlineDetector] = {}
        skipped: dict[str, str] = {}  # detectors the reference cannot support, and why
        errors = (reference.predictions != reference.labels).astype(np.float32)[:, None]
        if s.method == "cusum":
            enc = encoder  # short, for the table below
            wanted = {
                "mmd": (s.mmd, s.mmd_every, lambda: Distance.fit(enc.mmd(frame), s.bins)),
                "cvm": (s.univariate and s.cvm and bool(enc.cvm_columns), s.univariate_every,
                        lambda: QuantileBins.fit(enc.cvm(frame), s.bins)),  # profiles: below
                "fet": (s.univariate and s.fet and bool(enc.fet_columns), s.univariate_every,
                        lambda: Categories.fit(enc.fet(frame), enc.fet_columns, spec.binary)),
                "prediction": (s.prediction, s.univariate_every,
                               lambda: QuantileBins.fit(reference.scores[:, None], s.bins)),
                "error_rate": (s.error_rate, 1, lambda: Categories.fit(errors, ["_all"], set())),
            }  # fmt: skip
            columns = {"cvm": enc.cvm_columns, "fet": enc.fet_columns}
            for name, (on, every, fit) in wanted.items():
                if not on:
                    continue
                began = time.perf_counter()
                try:
                    # feature-view features: once per entity and snapshot
                    if name == "cvm" and set(spec.profile) & set(enc.cvm_columns):
                        chart = _profile_split(frame, spec, enc, s, s.ert_of(name))
                    else:
                        chart = ChartDetector(fit(), ert=s.ert_of(name), odds_ratio=s.odds_ratio)
                except ValueError as exc:
                    skipped[name] = str(exc)
                    continue
                online[name] = OnlineDetector(
                    name, columns.get(name, ["_all"]), chart,
                    setup_seconds=time.perf_counter() - began, cache_hit=False, every=every,
                )  # fmt: skip
        else:
            online.update(_alibi_detectors(reference, settings, encoder, errors, rows, common))
        prior_shift = PriorShift.fit(reference.labels, reference.predictions)
        if s.predicted_class:
            # Both directions: a rise of the positive share, or of the negative one. Every
            # prediction is read; by default the ERT in predictions is the per-feature
            # detectors' (they read one in univariate_every). Exact thresholds: no cache.
            began = time.perf_counter()
            try:
                chart = BernoulliCusum(class_columns(reference.predictions),
                                       ert=s.ert_of("predicted_class"))  # fmt: skip
            except ValueError as exc:
                skipped["predicted_class"] = str(exc)
            else:
                online["predicted_class"] = OnlineDetector(
                    "predicted_class", ["predicted_positive", "predicted_negative"], chart,
                    setup_seconds=time.perf_counter() - began, cache_hit=False,
                )  # fmt: skip
        estimator, estimator_error = None, None
        try:
            estimator = ConfidenceEstimator.fit(
                reference.scores, reference.labels, reference.predictions
            )
        except ValueError as exc:
            estimator_error = f"no accuracy estimate for {reference.version}: {exc}"
        return cls(
            reference=reference,
            settings=settings,
            encoder=encoder,
            online=online,
            setup_seconds=time.perf_counter() - start,
            recent=deque(maxlen=s.report_window),
            quality=deque(maxlen=s.accuracy_window),
            estimator=estimator,
            estimator_error=estimator_error,
            confidences=deque(maxlen=s.accuracy_window),
            prior_shift=prior_shift,
            classes=deque(maxlen=s.accuracy_window),
            skipped=skipped,
            profiles=ProfileMemory(spec)
            if isinstance(getattr(online.get("cvm"), "detector", None), ProfileSplitDetector)
            else None,
        )

    # --- updates (worker thread) ---------------------------------------------------------
    def observe(
        self, instances: list[dict[str, Any]], scores: list[float], predictions: list[int]
    ) -> None:
        """Feeds validated instances, their scores and predicted classes to the input,
        prediction and label-shift detectors."""
        frame = pd.DataFrame.from_records(instances, columns=self.reference.spec.names)
        self.samples += len(frame)
        self.recent.extend(instances)
        if "mmd" in self.online:
            self.online["mmd"].update(self.encoder.mmd(frame))
        if "cvm" in self.online:
            x = self.encoder.cvm(frame)
            if self.profiles is not None:  # with whether each row brings a new profile
                x = np.column_stack([x, self.profiles.new(instances)])
            self.online["cvm"].update(x)
        if "fet" in self.online:
            self.online["fet"].update(self.encoder.fet(frame))
        if "prediction" in self.online:
            self.online["prediction"].update(self.encoder.scores(np.asarray(scores)))
        if "predicted_class" in self.online:
            self.online["predicted_class"].update(class_columns(np.asarray(predictions)))
        self.classes.extend(predictions)
        if self.estimator is not None:
            self.confidences.extend(self.estimator.confidence(np.asarray(scores)).tolist())

    def feedback(self, labels: list[int], scores: list[float], predictions: list[int]) -> None:
        """Delayed ground truth for one answered request: live quality and the error-rate test."""
        errors = [int(p != y) for p, y in zip(predictions, labels, strict=True)]
        self.feedback_incorrect += sum(errors)
        self.feedback_correct += len(errors) - sum(errors)
        self.quality.extend(zip(labels, scores, predictions, strict=True))
        if "error_rate" in self.online:
            self.online["error_rate"].update(np.asarray(errors, dtype=np.float32)[:, None])

    # --- reads ----------------------------------------------------------------------------
    def live_accuracy(self) -> float | None:
        if not self.quality:
            return None
        q = np.asarray(self.quality, dtype=np.float64)
        return float((q[:, 0] == q[:, 2]).mean())

    def estimated_accuracy(self) -> float | None:
        """Accuracy over the latest ``accuracy_window`` predictions, from their scores alone."""
        return float(np.mean(self.confidences)) if self.confidences else None

    def positive_rates(self) -> dict[str, float | None]:
        """The positive class's share: in the reference's labels and predictions, in the
        latest predictions, and the prior estimated from those (label-shift evidence)."""
        ps = self.prior_shift
        predicted = float(np.mean(self.classes)) if self.classes else None
        return {
            "reference": ps.reference_prior,
            "reference_predicted": ps.reference_predicted,
            "predicted": predicted,
            "estimated": None if predicted is None else ps.prior(predicted),
        }

    def liveroc_auc(self) -> float | None:
        if not self.quality:
            return None
        q = np.asarray(self.quality, dtype=np.float64)
        y, s = q[:, 0], q[:, 1]
        n_pos = int(y.sum())
        if n_pos == 0 or n_pos == len(y):
            return None
        ranks = pd.Series(s).rank().to_numpy()  # ties get average ranks (Mann–Whitney)
        return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(y) - n_pos)))

    def views(self) -> list[DetectorView]:
        """Per (detector, feature) statistic/threshold/flag, plus a ``_all`` row per detector."""
        out: list[DetectorView] = []
        for name, det in self.online.items():
            by_feature: dict[str, tuple[float, float]] = {}
            for feature, stat, thr in det.per_column():
                margin = stat - thr
                if not np.isfinite(margin):
                    continue
                if (
                    feature not in by_feature
                    or margin > by_feature[feature][0] - by_feature[feature][1]
                ):
                    by_feature[feature] = (stat, thr)
            if not by_feature:
                continue
            if "_all" not in by_feature:
                by_feature["_all"] = max(by_feature.values(), key=lambda st: st[0] - st[1])
            for feature, (stat, thr) in by_feature.items():
                key = (name, feature)
                hit = det.detected if feature == "_all" else stat > thr
                self.latched[key] = self.latched.get(key, False) or bool(hit)
                out.append(DetectorView(name, feature, stat, thr, self.latched[key]))
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "reference_digest": self.reference.digest,
            "reference_rows": len(self.reference.frame),
            "samples": self.samples,
            "reset_at": self.reset_at,
            "seconds_since_reset": time.time() - self.reset_at,
            "setup_seconds": round(self.setup_seconds, 3),
            "settings": self.settings.to_dict(),
            "feedback": {"correct": self.feedback_correct, "incorrect": self.feedback_incorrect},
            "live_accuracy": self.live_accuracy(),
            "live_roc_auc": self.liveroc_auc(),
            "estimated_accuracy": self.estimated_accuracy(),
            "positive_rate": self.positive_rates(),
            "estimate": {
                "predictions": len(self.confidences),
                "reference_accuracy": None
                if self.estimator is None
                else self.estimator.reference_accuracy,
                "error": self.estimator_error,
            },
            "detectors": {
                name: {
                    "steps": d.steps,
                    "every": d.every,
                    "ert": float(d.detector.ert),
                    "detected": d.detected,
                    "detected_at_step": d.detected_at_step,
                    "setup_seconds": round(d.setup_seconds, 3),
                    "cache_hit": d.cache_hit,
                }
                for name, d in self.online.items()
            },
            "skipped_detectors": self.skipped,
            "features": [v.__dict__ for v in self.views()],
            "explained": self.explanation(),
        }

    def batch_test(self, rows: list[dict[str, Any]], p_val: float = 0.05) -> dict[str, Any]:
        """Batch KS (numeric) / chi-square (categorical) tests of ``rows`` against the
        reference (alibi-detect's ``TabularDrift``), FDR-corrected, per feature."""
        from alibi_detect.cd import TabularDrift

        spec = self.reference.spec
        names = spec.names

        def encode(frame: pd.DataFrame) -> np.ndarray:
            cols = [frame[n].to_numpy(dtype=np.float64) for n in spec.numeric]
            for feat, cats in spec.categorical.items():
                cols.append(
                    frame[feat].map({c: i for i, c in enumerate(cats)}).to_numpy(dtype=np.float64)
                )
            return np.stack(cols, axis=1).astype(np.float32)

        if self._tabular is None or self._tabular[0] != p_val:
            cat_idx = {len(spec.numeric) + i: None for i in range(len(spec.categorical))}
            x_ref = encode(self.reference.frame)
            det = TabularDrift(x_ref, p_val=p_val, categories_per_feature=cat_idx, correction="fdr")
            self._tabular = (p_val, det)
        det = self._tabular[1]
        x = encode(pd.DataFrame.from_records(rows, columns=names))
        out = det.predict(x, drift_type="batch", return_p_val=True, return_distance=True)["data"]
        p = np.asarray(out["p_val"], dtype=np.float64)
        order = np.argsort(p)
        q = np.empty_like(p)  # Benjamini–Hochberg adjusted p-values, for reading per feature
        q[order] = np.minimum.accumulate((p[order] * len(p) / np.arange(1, len(p) + 1))[::-1])[::-1]
        tests = ["ks"] * len(spec.numeric) + ["chi2"] * len(spec.categorical)
        return {
            "model": self.model,
            "version": self.version,
            "window": len(x),
            "reference_rows": len(self.reference.frame),
            "fdr": p_val,
            "drift": bool(out["is_drift"]),
            "features": [
                {
                    "feature": n,
                    "test": t,
                    "statistic": float(d),
                    "p_value": float(pv),
                    "q_value": float(qv),
                    "drift": bool(qv <= p_val),
                }
                for n, t, d, pv, qv in zip(
                    names, tests, out["distance"], p, np.minimum(q, 1.0), strict=True
                )
            ],  # fmt: skip
        }

    def report(self, p_val: float = 0.05) -> dict[str, Any]:
        """The batch tests on the last ``report_window`` instances (``GET /v1/report``)."""
        if len(self.recent) < 20:
            raise ValueError(
                f"{self.model}/{self.version} has {len(self.recent)} recent instances; need >= 20"
            )
        return self.batch_test(list(self.recent), p_val)

    def explanation(self, now: float | None = None) -> dict[str, Any] | None:
        """Which inputs moved: the batch tests on the latest ``explain_rows`` instances,
        recomputed at most every ``explain_every_seconds`` and only when instances arrived
        since (``None`` before 50 instances)."""
        s = self.settings
        now = time.monotonic() if now is None else now
        if len(self.recent) < 50:
            return None
        last = self._explained
        if last is None or (self.samples != last[1] and now - last[0] >= s.explain_every_seconds):
            rows = list(self.recent)[-s.explain_rows :]
            self._explained = (now, self.samples, self.batch_test(rows))
        return self._explained[2]
