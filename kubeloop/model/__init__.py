"""The model shared by training, evaluation and serving."""

from kubeloop.model.network import ModelBundle, ModelConfig, TabularClassifier
from kubeloop.model.preprocessing import Preprocessor

__all__ = ["ModelBundle", "ModelConfig", "Preprocessor", "TabularClassifier"]
