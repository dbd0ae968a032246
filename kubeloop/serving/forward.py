"""The model's forward pass for serving: instance dicts straight into numpy, then the network.

``ModelBundle.predict`` takes a pandas DataFrame, which costs about a millisecond per
request to build and transform, several times the network itself. :class:`Forward`
computes exactly the same float32 matrix as ``Preprocessor.transform`` (same float64
operations in the same order, then the same cast) from plain rows, with the
preprocessing state turned into arrays once per loaded version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from kubeloop.model import ModelBundle


class Forward:
    """Scores plain rows (``{feature: value}``) with one bundle; built once per version."""

    def __init__(self, bundle: ModelBundle) -> None:
        pre = bundle.preprocessor
        self.network = bundle.network
        self.threshold = bundle.config.threshold
        self.numeric = list(pre.numeric)
        self.n_numeric = len(self.numeric)
        self.log_columns = [j for j, n in enumerate(self.numeric) if n in pre.log_features]
        self.mean = np.array([pre.mean[n] for n in self.numeric], dtype=np.float64)
        self.std = np.array([pre.std[n] for n in self.numeric], dtype=np.float64)
        # One-hot slots: per categorical feature, its column offset and vocabulary index.
        self.categorical: list[tuple[str, dict[str, int]]] = []
        offset = self.n_numeric
        for name, vocab in pre.categorical.items():
            self.categorical.append((name, {v: offset + k for k, v in enumerate(vocab)}))
            offset += len(vocab)
        self.n_outputs = offset
        if offset != pre.n_outputs:
            raise ValueError(f"preprocessing state is inconsistent: {offset} != {pre.n_outputs}")

    def matrix(self, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        """The network's input, equal to ``Preprocessor.transform(DataFrame(rows))``."""
        n = len(rows)
        numeric = self.numeric
        out = np.zeros((n, self.n_outputs), dtype=np.float64)
        # None becomes NaN, as pandas makes a missing value in a numeric column.
        x = np.array([[row[name] for name in numeric] for row in rows], dtype=np.float64)
        x = x.reshape(n, self.n_numeric)
        if self.log_columns:
            cols = self.log_columns
            x[:, cols] = np.log1p(np.clip(x[:, cols], 0, None))
        np.subtract(x, self.mean, out=x)
        np.divide(x, self.std, out=out[:, : self.n_numeric])
        for name, slots in self.categorical:
            for i, row in enumerate(rows):
                slot = slots.get(str(row[name]))
                if slot is not None:  # unknown categories stay all zeros, as in training
                    out[i, slot] = 1.0
        return out.astype(np.float32)

    def predict(self, rows: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """Returns (positive-class scores as float64, classes at the bundle's threshold)."""
        x = torch.from_numpy(self.matrix(rows))
        with torch.inference_mode():
            scores = torch.sigmoid(self.network(x)).numpy().astype(np.float64)
        return scores, (scores >= self.threshold).astype(np.int64)
