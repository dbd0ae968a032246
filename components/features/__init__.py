"""The features stage: point-in-time feature join (Feast) and the time split."""
