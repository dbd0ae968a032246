"""Training: the Ray Train loop and the local Ray instance it runs on."""

from kubeloop.training.loop import TrainingDataError
from kubeloop.training.ray_train import TrainOutcome, TrainParams, train_model

__all__ = ["TrainOutcome", "TrainParams", "TrainingDataError", "train_model"]
