"""Serving: the KServe predictor, payload logging, the local traffic router, InferenceServices."""
