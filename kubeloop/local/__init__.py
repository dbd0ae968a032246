"""The local runtime: everything that runs kubeloop on one machine.

On a cluster, Kubernetes runs kubeloop's workloads; here, these modules do:

- ``supervisor``: starts, health-checks, adopts and stops child processes under one folder;
- ``prometheus``, ``drift``, ``servers``: one launcher each for Prometheus, the drift
  service (its own venv) and the predictor / router processes;
- ``operator``: the operator's local driver and its actuators (predictor processes, the
  router's split, retraining runs);
- ``pipelines``: the training pipeline run by ``kfp.local``, each stage a subprocess or,
  through ``containers`` (a Docker-compatible API: Docker, or podman's service), a
  container of its stage image;
- ``runtime``: ``LocalRuntime``, all of the above as ``kubeloop up`` / ``kubeloop demo`` run it;
- ``watchdog`` and ``restarts``: the process that restarts a part that died, and its
  back-off and give-up policy;
- ``ports`` and ``wait``: a free loopback port, and waiting for a condition with a deadline.

Nothing heavy is imported here.
"""
