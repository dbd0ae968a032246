"""Importing Feast without switching kubeloop's metrics to multiprocess mode.

``import feast`` (its ``feast.metrics`` module, for its Gunicorn feature server) sets
``PROMETHEUS_MULTIPROCESS_DIR`` and ``PROMETHEUS_MULTIPROC_DIR`` in ``os.environ`` to a
fresh temporary folder. prometheus-client reads them once, when it is first imported:
in a process that imports Feast first every metric value becomes a memory-mapped file,
and every process it starts afterwards (the drift service, predictors) inherits them,
so a counter removed there and created again comes back with its old value from the
file. kubeloop runs no Gunicorn workers; :func:`load_feast` imports prometheus-client
first and takes Feast's variables back out of the environment (variables the user set
are kept).
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

MULTIPROCESS_VARIABLES = ("PROMETHEUS_MULTIPROCESS_DIR", "PROMETHEUS_MULTIPROC_DIR")


def load_feast() -> ModuleType:
    """The ``feast`` package, imported with the environment as it was before."""
    if "feast" in sys.modules:
        return sys.modules["feast"]
    import prometheus_client.values  # noqa: F401  (its value class is chosen now, in-process)

    before = {name for name in MULTIPROCESS_VARIABLES if name in os.environ}
    import feast

    for name in MULTIPROCESS_VARIABLES:
        if name not in before:
            os.environ.pop(name, None)
    return feast
