"""The tabular classifier and the bundle that turns a registry version into predictions."""

from __future__ import annotations

import json
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


@dataclass(frozen=True)
class ModelConfig:
    n_inputs: int
    hidden_units: int = 32
    dropout: float = 0.1
    threshold: float = 0.5  # decision threshold for the positive class


class TabularClassifier(nn.Module):
    """A small MLP producing one logit (binary classification)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h = config.hidden_units
        self.net = nn.Sequential(
            nn.Linear(config.n_inputs, h),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(h, h),
            nn.ReLU(),
            nn.Linear(h, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


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
