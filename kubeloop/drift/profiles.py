"""Which rows carry a profile not seen before: feature-view features counted once per
entity and snapshot (pure; the detectors that read them: ``kubeloop.drift.cusum``).

An entity's profile (the feature view's features) is the same on every row the entity
sends until its next snapshot. A profile is told apart by the entity key, when rows carry
it, and its values: a new snapshot changes them (an account's age moves every day).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from kubeloop.drift.reference import FeatureSpec

PROFILES_KEPT = 200_000  # the profiles remembered (oldest forgotten first): a few days' worth


def profile_ids(frame: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """Per row of ``frame``: a number for its profile (entity key, when ``frame`` has it, and
    the profile's values), the same for every row of one profile."""
    keys = [*([spec.entity] if spec.entity and spec.entity in frame else []), *spec.profile]
    return frame.groupby(keys, sort=False, dropna=False).ngroup().to_numpy()


def first_rows(frame: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """Per row of ``frame``: whether it is the first row of its profile."""
    return ~pd.Series(profile_ids(frame, spec)).duplicated(keep="first").to_numpy()


class ProfileMemory:
    """The profiles seen lately (at most ``kept``): which of the next rows bring a new one."""

    def __init__(self, spec: FeatureSpec, kept: int = PROFILES_KEPT) -> None:
        if not spec.profile:
            raise ValueError("the schema has no feature-view features: no profiles to tell apart")
        self.entity, self.names, self.kept = spec.entity, list(spec.profile), kept
        self._seen: OrderedDict[tuple, None] = OrderedDict()

    def new(self, instances: Iterable[Mapping[str, Any]]) -> np.ndarray:
        flags = []
        for inst in instances:
            key = (inst.get(self.entity) if self.entity else None, *(inst[n] for n in self.names))
            if key in self._seen:
                self._seen.move_to_end(key)
                flags.append(False)
                continue
            self._seen[key] = None
            if len(self._seen) > self.kept:
                self._seen.popitem(last=False)
            flags.append(True)
        return np.asarray(flags, dtype=bool)

    def clear(self) -> None:
        self._seen.clear()
