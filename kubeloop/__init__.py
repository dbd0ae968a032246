"""kubeloop: the machine-learning lifecycle as one closed loop, on Kubernetes or one machine."""

__version__ = "0.1.0"
