"""Turns raw feature rows into the arrays each detector reads (pure numpy).

- ``mmd``: every feature; non-negative numeric features through ``log1p`` (amounts and
  distances are heavy-tailed), then z-scored on the reference; categories one-hot.
- ``cvm``: continuous numeric features, and integer ones jittered by U(-0.5, 0.5):
  the Cramér–von Mises thresholds assume no ties, and jittering both the reference and
  the stream keeps "same distribution" true exactly when it was true before.
- ``fet``: binary (0/1) features and one column per category, as 0/1.

With ``untie`` (``method: alibi``, whose Cramér–von Mises thresholds are simulated for
data without ties), the other ``cvm`` columns and the scores (``scores``) are also
jittered, by U(-0.5, 0.5) times a thousandth of the column's reference spread: a number
that is exactly 0 on most rows, a near-constant column or scores saturated at 0 and 1
tie on most rows and made those detectors alarm twice as often as their ERT. As for
integers, the same jitter on the reference and the stream keeps "same distribution"
true exactly when it was true before. Both stay in float64: in float32 a near-constant
column's jittered values (1.0 give or take 1e-5) fall on a few hundred representable
numbers and tie again (359 distinct values in 2,000 rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kubeloop.drift.reference import FeatureSpec

SCORE_JITTER = 1e-4  # scores lie in [0, 1]: a ten-thousandth breaks their ties


def _spread(values: np.ndarray) -> float:
    """A thousandth of a column's spread (its standard deviation, else 1): its tie jitter."""
    sd = float(np.std(values)) if len(values) else 0.0
    return 1e-3 * (sd if sd > 1e-12 else 1.0)


@dataclass
class Encoder:
    spec: FeatureSpec
    log_features: list[str]
    mean: np.ndarray
    std: np.ndarray
    seed: int = 0
    untie: bool = False
    spread: dict[str, float] | None = None  # per non-integer cvm column, when untie

    @classmethod
    def fit(
        cls, spec: FeatureSpec, frame: pd.DataFrame, seed: int = 0, untie: bool = False
    ) -> Encoder:
        numeric = (
            frame[spec.numeric].to_numpy(dtype=np.float64)
            if spec.numeric
            else np.zeros((len(frame), 0))
        )
        log_features = [
            n
            for i, n in enumerate(spec.numeric)
            if numeric[:, i].min() >= 0 and n not in spec.binary
        ]
        enc = cls(spec, log_features, np.zeros(len(spec.numeric)), np.ones(len(spec.numeric)), seed)
        transformed = enc._numeric(frame)
        enc.mean = transformed.mean(axis=0)
        enc.std = np.where(transformed.std(axis=0) > 1e-12, transformed.std(axis=0), 1.0)
        enc._rng = np.random.default_rng(seed)
        enc.untie = untie
        enc.spread = {
            n: _spread(frame[n].to_numpy(dtype=np.float64))
            for n in enc.cvm_columns
            if n not in spec.integer
        }
        return enc

    def _numeric(self, frame: pd.DataFrame) -> np.ndarray:
        out = frame[self.spec.numeric].to_numpy(dtype=np.float64, copy=True)
        for i, name in enumerate(self.spec.numeric):
            if name in self.log_features:
                out[:, i] = np.log1p(out[:, i])
        return out

    def _onehot(self, frame: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        blocks, names = [], []
        for feat, cats in self.spec.categorical.items():
            values = frame[feat].to_numpy()
            blocks.append(np.stack([values == c for c in cats], axis=1).astype(np.float64))
            names += [feat] * len(cats)
        if not blocks:
            return np.zeros((len(frame), 0)), []
        return np.concatenate(blocks, axis=1), names

    @property
    def cvm_columns(self) -> list[str]:
        return [n for n in self.spec.numeric if n not in self.spec.binary]

    @property
    def fet_columns(self) -> list[str]:
        cols = [n for n in self.spec.numeric if n in self.spec.binary]
        for feat, cats in self.spec.categorical.items():
            cols += [feat] * len(cats)
        return cols

    def mmd(self, frame: pd.DataFrame) -> np.ndarray:
        z = (self._numeric(frame) - self.mean) / self.std
        onehot, _ = self._onehot(frame)
        return np.concatenate([z, onehot], axis=1).astype(np.float32)

    def cvm(self, frame: pd.DataFrame) -> np.ndarray:
        cols = self.cvm_columns
        x = frame[cols].to_numpy(dtype=np.float64, copy=True)
        for i, name in enumerate(cols):
            if name in self.spec.integer:
                x[:, i] += self._rng.uniform(-0.5, 0.5, len(x))
            elif self.untie and self.spread:
                x[:, i] += self._rng.uniform(-0.5, 0.5, len(x)) * self.spread[name]
        return x

    def scores(self, values: np.ndarray) -> np.ndarray:
        """The prediction detector's input, one column: the scores (jittered with ``untie``)."""
        x = np.asarray(values, dtype=np.float64).reshape(-1, 1)
        if self.untie:
            x = x + self._rng.uniform(-0.5, 0.5, x.shape) * SCORE_JITTER
        return x

    def fet(self, frame: pd.DataFrame) -> np.ndarray:
        binary = [n for n in self.spec.numeric if n in self.spec.binary]
        onehot, _ = self._onehot(frame)
        x = np.concatenate([frame[binary].to_numpy(dtype=np.float64), onehot], axis=1)
        return x.astype(np.float32)
