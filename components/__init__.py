"""KFP components, one per lifecycle stage (installed as ``kubeloop.components``)."""
