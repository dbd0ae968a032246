"""Wire contracts shared by parts of kubeloop that run in different environments.

Modules here import the standard library only: they are read both by the main
environment (predictor, router, local runtime) and by the drift service's own
environment (``kubeloop.drift``), which cannot import pydantic 2, torch or Feast.
The prose of every contract is ``docs/contracts.md``.
"""
