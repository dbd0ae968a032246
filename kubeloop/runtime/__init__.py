"""The local runtime: a supervisor for the processes that stand in for cluster workloads."""

from kubeloop.runtime.supervisor import ProcessRecord, Supervisor, SupervisorError

__all__ = ["ProcessRecord", "Supervisor", "SupervisorError"]
