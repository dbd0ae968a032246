"""The training pipeline: ingest → validate → features → train → evaluate → gate → register.

``register`` runs only when the gate passed (``dsl.If``). Stages whose result depends
on more than their inputs do not use KFP's cache: ingest (a source such as an S3
prefix or a live table moves between runs), gate and register (the registry's
champion changes). Register records the KFP run id (``{{$.pipeline_job_uuid}}``), the
key by which the operator finds the version a retraining run produced.

Every task runs on the release's image of its stage and gets the S3 storage environment
(:class:`~kubeloop.pipelines.cluster.PipelineCluster`); :func:`build_training_pipeline`
builds the pipeline for given names, ``training_pipeline`` is it with the chart's defaults.
"""

from kfp import dsl
from kubeloop.components.evaluate.component import evaluate
from kubeloop.components.features.component import features
from kubeloop.components.gate.component import gate
from kubeloop.components.ingest.component import ingest
from kubeloop.components.register.component import register
from kubeloop.components.train.component import train
from kubeloop.components.validate.component import validate
from kubeloop.pipelines.cluster import PipelineCluster

from kubeloop.images import image

PIPELINE_NAME = "kubeloop-training"
DEFAULT_SOURCE = "example://fraud/stationary?days=14&accounts=2000&seed=0"


@dsl.component(base_image=image("register"), install_kfp_package=False)
def run_parameters(
    source_uri: str,
    schema_uri: str,
    window_start: str,
    window_end: str,
    model_name: str,
    eval_fraction: float,
    num_workers: int,
    use_gpu: bool,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    hidden_units: int,
    members: int,
    seed: int,
    target_positive_rate: float,
    replay_version: str,
    replay_fraction: float,
    distill_weight: float,
) -> str:
    """Serialises the run's parameters as JSON for the registry's lineage.

    Args:
        source_uri: see the pipeline; every argument is recorded as given.
        schema_uri: schema of the source.
        window_start: start of the data window.
        window_end: end of the data window.
        model_name: registry model name.
        eval_fraction: evaluation share of the window.
        num_workers: Ray Train workers.
        use_gpu: whether workers used GPUs.
        epochs: training epochs.
        batch_size: mini-batch size.
        learning_rate: Adam learning rate.
        hidden_units: hidden layer width.
        members: networks in the deep ensemble (1: one network).
        seed: training seed.
        target_positive_rate: the class prior training re-weighted to (0: none).
        replay_version: the version whose reference sample was replayed ("": none).
        replay_fraction: share of the training rows replayed from it.
        distill_weight: weight of that version's scores in the training targets (0: none).

    Returns:
        The parameters as a JSON object.
    """
    parameters = dict(locals())  # the arguments only: taken before any other local exists
    import json

    return json.dumps(parameters, sort_keys=True)


def build_training_pipeline(cluster: PipelineCluster | None = None):
    """The training pipeline for ``cluster`` (default: the chart's release ``kubeloop``)."""
    cluster = cluster or PipelineCluster()

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Trains, evaluates and gates a fraud model; registers it when it passes.",
    )
    def training_pipeline(
        source_uri: str = DEFAULT_SOURCE,
        schema_uri: str = "",
        window_start: str = "",
        window_end: str = "",
        model_name: str = "fraud-detector",
        registry_uri: str = "",
        eval_fraction: float = 0.2,
        num_workers: int = 1,
        use_gpu: bool = False,
        epochs: int = 8,
        batch_size: int = 512,
        learning_rate: float = 0.003,
        hidden_units: int = 32,
        members: int = 1,
        seed: int = 7,
        target_positive_rate: float = 0.0,
        replay_version: str = "",
        replay_fraction: float = 0.0,
        distill_weight: float = 0.0,
    ) -> None:
        ingest_task = ingest(
            source_uri=source_uri,
            schema_uri=schema_uri,
            window_start=window_start,
            window_end=window_end,
        )
        ingest_task.set_caching_options(False)
        cluster.apply(ingest_task, "ingest")
        validate_task = validate(dataset=ingest_task.outputs["dataset"])
        cluster.apply(validate_task, "validate")
        features_task = features(
            dataset=validate_task.outputs["validated"],
            eval_fraction=eval_fraction,
            model_name=model_name,
            registry_uri=registry_uri,
            replay_version=replay_version,
            replay_fraction=replay_fraction,
            distill_weight=distill_weight,
            seed=seed,
        )
        cluster.apply(features_task, "features")
        train_task = train(
            train_set=features_task.outputs["train_set"],
            num_workers=num_workers,
            use_gpu=use_gpu,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            hidden_units=hidden_units,
            members=members,
            seed=seed,
            target_positive_rate=target_positive_rate,
            distill_weight=distill_weight,
        )
        cluster.apply(train_task, "train")
        evaluate_task = evaluate(
            model=train_task.outputs["model"], eval_set=features_task.outputs["eval_set"]
        )
        cluster.apply(evaluate_task, "evaluate")
        gate_task = gate(
            model=train_task.outputs["model"],
            evaluation=evaluate_task.outputs["evaluation"],
            eval_set=features_task.outputs["eval_set"],
            model_name=model_name,
            registry_uri=registry_uri,
        )
        gate_task.set_caching_options(False)
        cluster.apply(gate_task, "gate")
        params_task = run_parameters(
            source_uri=source_uri,
            schema_uri=schema_uri,
            window_start=window_start,
            window_end=window_end,
            model_name=model_name,
            eval_fraction=eval_fraction,
            num_workers=num_workers,
            use_gpu=use_gpu,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            hidden_units=hidden_units,
            members=members,
            seed=seed,
            target_positive_rate=target_positive_rate,
            replay_version=replay_version,
            replay_fraction=replay_fraction,
            distill_weight=distill_weight,
        )
        cluster.apply(params_task, "register")
        with dsl.If(gate_task.outputs["passed"] == True, name="gate-passed"):  # noqa: E712
            register_task = register(
                model=train_task.outputs["model"],
                evaluation=evaluate_task.outputs["evaluation"],
                decision=gate_task.outputs["decision"],
                dataset=ingest_task.outputs["dataset"],
                model_name=model_name,
                registry_uri=registry_uri,
                pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                parameters_json=params_task.output,
            )
            register_task.set_caching_options(False)
            cluster.apply(register_task, "register")

    return training_pipeline


training_pipeline = build_training_pipeline()
