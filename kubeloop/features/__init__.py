"""Features: the Feast store kubeloop prepares per run, and online lookups for serving."""

from kubeloop.features.online import OnlineFeatures
from kubeloop.features.store import FeatureStoreError, prepare_feature_store, training_frame

__all__ = ["FeatureStoreError", "OnlineFeatures", "prepare_feature_store", "training_frame"]
