"""The ModelDeployment operator: CRD models, reconciler core, adapters (``kubeloop.operators``)."""
