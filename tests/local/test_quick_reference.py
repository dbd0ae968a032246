"""The reference sample a quickly trained version publishes spans its whole evaluation
window: the hour of day in it is as even as in the traffic the drift service compares."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kubeloop.registry import ModelRegistry
from kubeloop.training.quick import publish_quick_version

pytestmark = pytest.mark.slow


def test_the_reference_sample_covers_every_hour_alike(tmp_path):
    # the demo's v1: 800 accounts over 10 days, ~5,000 evaluation rows for 2,000 reference rows
    registry = ModelRegistry(str(tmp_path))
    version = publish_quick_version(registry, "fd", seed=100, n_accounts=800, days=10.0)
    reference = pd.read_parquet(
        tmp_path / "fd" / "versions" / version.version / "reference.parquet"
    )
    assert 2000 <= len(reference) < 2050  # whole account profiles, up to about 2,000 rows
    counts = np.bincount(reference["hour"], minlength=24)
    # the first 2,000 rows by time covered the first day and a quarter: hours 0-5 twice
    assert stats.chisquare(counts).pvalue > 1e-3, counts
