"""The closed loop on one machine: local runtime, scripted traffic, timeline and report.

``kubeloop demo`` (``run_demo``) and ``kubeloop up`` / ``kubeloop down`` (``LocalRuntime``)
are the entry points; ``report`` turns a recorded timeline into ``summary.json`` and
``index.html``.
"""

from kubeloop.demo.config import LoopConfig
from kubeloop.local.runtime import LocalRuntime, RuntimePorts

__all__ = ["LocalRuntime", "LoopConfig", "RuntimePorts"]
