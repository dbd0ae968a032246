"""The tabular classifier and the bundle that turns a registry version into predictions."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from kubeloop.data.schema import DatasetSchema
from kubeloop.model.preprocessing import Preprocessor

MODEL_FILE = "model.pt"
MODEL_CONFIG_FILE = "model.json"
PREPROCESSING_FILE = "preprocessing.json"
SCHEMA_FILE = "schema.json"
# what ModelBundle.load reads: a version's other files (reference sample, metrics) aside
BUNDLE_FILES = (MODEL_FILE, MODEL_CONFIG_FILE, PREPROCESSING_FILE, SCHEMA_FILE)


@dataclass(frozen=True)
class ModelConfig:
    n_inputs: int
    hidden_units: int = 32
    dropout: float = 0.1
    threshold: float = 0.5  # decision threshold for the positive class
    # A deep ensemble: this many networks of the same shape, each from its own initial
    # weights, trained side by side on the same batches; the score averages their logits.
    members: int = 1


class MemberLinear(nn.Module):
    """``members`` independent linear layers applied at once: input ``[members, rows, in]``
    (or ``[rows, in]``, shared by every member), output ``[members, rows, out]``.
    Initialised per member as ``nn.Linear`` is (uniform within 1/sqrt(in))."""

    def __init__(self, n_in: int, n_out: int, members: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(n_in)
        self.weight = nn.Parameter(torch.empty(members, n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, n_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return torch.einsum("ri,mio->mro", x, self.weight) + self.bias
        return torch.baddbmm(self.bias, x, self.weight)


class TabularClassifier(nn.Module):
    """A small MLP producing one logit (binary classification), or ``config.members`` of
    them side by side (a deep ensemble).

    An ensemble's forward gives every member's logits (``[members, rows]``) while training,
    so each member learns from its own loss, and their mean (``[rows]``) in eval mode: what
    validation, evaluation and serving score. One network's output is ``[rows]`` in both.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h, members = config.hidden_units, config.members
        if members < 1:
            raise ValueError(f"members must be at least 1, got {members}")

        def linear(n_in: int, n_out: int) -> nn.Module:
            return nn.Linear(n_in, n_out) if members == 1 else MemberLinear(n_in, n_out, members)

        self.members = members
        self.net = nn.Sequential(
            linear(config.n_inputs, h),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            linear(h, h),
            nn.ReLU(),
            linear(h, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x).squeeze(-1)  # [rows], or [members, rows] for an ensemble
        return logits if self.members == 1 or self.training else logits.mean(0)

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits, ``[members, rows]`` (one network: ``[1, rows]``)."""
        logits = self.net(x).squeeze(-1)
        return logits.unsqueeze(0) if self.members == 1 else logits


@dataclass
class ModelBundle:
    """Everything needed to score raw feature rows: schema, preprocessing, network."""

    schema: DatasetSchema
    preprocessor: Preprocessor
    config: ModelConfig
    network: TabularClassifier

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        x = torch.from_numpy(self.preprocessor.transform(df))
        with torch.inference_mode():
            return torch.sigmoid(self.network(x)).numpy().astype(np.float64)

    def predict(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Returns (scores, classes) with the bundle's decision threshold."""
        scores = self.predict_proba(df)
        return scores, (scores >= self.config.threshold).astype(np.int64)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.network.state_dict(), folder / MODEL_FILE)
        (folder / MODEL_CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))
        self.preprocessor.save(folder / PREPROCESSING_FILE)
        (folder / SCHEMA_FILE).write_text(self.schema.to_json())
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ModelBundle:
        folder = Path(folder)
        config = ModelConfig(**json.loads((folder / MODEL_CONFIG_FILE).read_text()))
        network = TabularClassifier(config)
        state = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
        network.eval()
        return cls(
            schema=DatasetSchema.model_validate_json((folder / SCHEMA_FILE).read_text()),
            preprocessor=Preprocessor.load(folder / PREPROCESSING_FILE),
            config=config,
            network=network,
        )
