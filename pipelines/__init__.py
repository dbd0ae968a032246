"""KFP pipelines composed from the stage components (installed as ``kubeloop.pipelines``)."""
