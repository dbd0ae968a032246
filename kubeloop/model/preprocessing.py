"""Preprocessing state shared by training and serving: fitted once, stored with the model.

Numeric features are log-compressed where heavy-tailed and standardised; categories
are one-hot encoded against the vocabulary seen in training (unknown values map to
all zeros). The state is plain JSON so the predictor rebuilds exactly what training
used, without pickles.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kubeloop.data.schema import DatasetSchema


@dataclass
class Preprocessor:
    numeric: list[str]
    categorical: dict[str, list[str]]
    log_features: list[str] = field(default_factory=list)
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)

    @classmethod
    def fit(cls, df: pd.DataFrame, schema: DatasetSchema) -> Preprocessor:
        numeric = [c.name for c in schema.features if c.dtype in ("float", "int", "bool")]
        categorical = {
            c.name: list(c.categories or sorted(df[c.name].astype(str).unique()))
            for c in schema.features
            if c.dtype in ("category", "string")
        }
        # Heavy right tails (amounts, distances, counts) are compressed before scaling.
        log_features = [
            name
            for name in numeric
            if (df[name].min() >= 0)
            and (df[name].quantile(0.99) > 10 * max(df[name].median(), 1e-9))
        ]
        pre = cls(numeric=numeric, categorical=categorical, log_features=log_features)
        x = pre._numeric_block(df)
        pre.mean = dict(zip(numeric, x.mean(axis=0).astype(float).tolist(), strict=True))
        pre.std = dict(
            zip(numeric, np.maximum(x.std(axis=0), 1e-6).astype(float).tolist(), strict=True)
        )
        return pre

    @property
    def input_columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @property
    def output_names(self) -> list[str]:
        return [
            *self.numeric,
            *(f"{c}={v}" for c, vocab in self.categorical.items() for v in vocab),
        ]

    @property
    def n_outputs(self) -> int:
        return len(self.numeric) + sum(len(v) for v in self.categorical.values())

    def _numeric_block(self, df: pd.DataFrame) -> np.ndarray:
        x = df[self.numeric].to_numpy(dtype=np.float64, copy=True)
        for j, name in enumerate(self.numeric):
            if name in self.log_features:
                x[:, j] = np.log1p(np.clip(x[:, j], 0, None))
        return x

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Returns a float32 matrix with ``n_outputs`` columns, in ``output_names`` order."""
        x = self._numeric_block(df)
        mean = np.array([self.mean[n] for n in self.numeric])
        std = np.array([self.std[n] for n in self.numeric])
        blocks = [(x - mean) / std]
        for name, vocab in self.categorical.items():
            values = df[name].astype(str).to_numpy()
            blocks.append((values[:, None] == np.array(vocab)[None, :]).astype(np.float64))
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Preprocessor:
        return cls(**json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Preprocessor:
        return cls.from_json(Path(path).read_text())
