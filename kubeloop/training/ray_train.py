"""Training the tabular classifier with Ray Train's ``TorchTrainer``.

The driver fits the preprocessor on the training part (time split) and runs
``train_loop_per_worker`` on ``num_workers`` workers (data-parallel, DDP through
``prepare_model``), the encoded arrays shared through Ray's object store. Each epoch
every worker reports its metrics with ``ray.train.report``; rank 0 keeps the weights of
the epoch with the lowest validation loss (per member of an ensemble, ``members > 1``:
networks trained side by side whose logits the model averages) and returns them with
every epoch's metrics (Ray Train's ``Result.return_value``). The prior correction is
folded into the output bias, the decision threshold is chosen on validation (where a
Platt fit gives 0.5, ``loop.decision_threshold``), and the result is a
:class:`kubeloop.model.ModelBundle`.

One CPU worker with no Ray cluster to train on runs in Ray Train's local mode
(``ScalingConfig(num_workers=0)``): the same loop in this process, with the arrays as
they are (``ray_runtime.connect``, ``in_process``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from kubeloop.data.schema import DatasetSchema
from kubeloop.model import ModelBundle, ModelConfig, Preprocessor, TabularClassifier
from kubeloop.training import loop
from kubeloop.training.ray_runtime import RayTarget


class TrainingResourceError(RuntimeError):
    """The Ray cluster cannot place the requested workers (CPUs or GPUs)."""


@dataclass(frozen=True)
class TrainParams:
    num_workers: int = 1
    use_gpu: bool = False
    epochs: int = 8
    batch_size: int = 512
    learning_rate: float = 3e-3
    hidden_units: int = 32
    seed: int = 7
    validation_fraction: float = 0.2
    dropout: float = 0.1
    # Networks trained side by side as one deep ensemble (ModelConfig.members): averaging
    # them narrows the spread a single network's random start leaves on a small window.
    members: int = 1
    # Label shift: train as if the positive rate were this (0: the training data's own).
    target_positive_rate: float = 0.0
    # Distillation: the training part's targets are (1 - w) * label + w * the stable
    # version's score (the CHAMPION_SCORE column); validation keeps the labels. 0: labels.
    distill_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("num_workers", "epochs", "batch_size", "hidden_units", "members"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.distill_weight < 1.0:
            raise ValueError(f"distill_weight must be in [0, 1), got {self.distill_weight}")


@dataclass
class TrainOutcome:
    bundle: ModelBundle
    metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    fit_seconds: float = 0.0
    ray: RayTarget | None = None  # where it trained, and why not on a configured cluster


RUN_STORAGE_PREFIX = "ray-train"


@dataclass(frozen=True)
class RunStorage:
    """Where Ray Train keeps a run's files (its controller's state) while the run lasts.

    On this machine's own Ray, a local folder. On a Ray cluster the workers and this
    driver run on different machines, so Ray Train needs storage all of them reach: the
    registry's S3 bucket (``<bucket>/<prefix>/ray-train/``), through the S3 settings'
    endpoint and credentials.
    """

    path: str
    filesystem: Any = None  # pyarrow.fs.FileSystem for remote storage
    owned: bool = True  # removed by cleanup()

    @classmethod
    def for_target(cls, target: RayTarget, work_dir: str | Path | None = None) -> RunStorage:
        if not target.remote:
            if work_dir is not None:
                return cls(path=str(Path(work_dir).resolve()), owned=False)
            return cls(path=str(Path(tempfile.mkdtemp(prefix="kubeloop-train-")).resolve()))
        from kubeloop.settings import get_settings

        settings = get_settings()
        uri = settings.registry_uri or ""
        if not uri.startswith("s3://"):
            raise TrainingResourceError(
                f"training on the Ray cluster at {target.address} needs storage its nodes "
                f"share: set registry_uri to s3://bucket/prefix (got {uri or 'a local path'!r})"
            )
        from pyarrow import fs

        s3 = settings.s3
        filesystem = fs.S3FileSystem(
            access_key=s3.access_key,
            secret_key=s3.secret_key,
            endpoint_override=s3.endpoint,
            scheme="https" if s3.secure else "http",
            region=s3.region or "us-east-1",
        )
        base = uri.removeprefix("s3://").rstrip("/")
        return cls(path=f"{base}/{RUN_STORAGE_PREFIX}", filesystem=filesystem)

    def cleanup(self, run_name: str) -> None:
        """Removes the run's files (the whole temporary folder when local)."""
        if not self.owned:
            return
        if self.filesystem is None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        with contextlib.suppress(OSError):  # a folder left behind costs storage, not the run
            self.filesystem.delete_dir(f"{self.path}/{run_name}")


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """Runs on every Ray Train worker: one shard of the training rows, full validation.
    Rank 0 returns the kept weights (numpy arrays: each member's from the epoch of its
    lowest validation loss), their validation metrics and every epoch's."""
    import ray
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config["seed"])  # identical initial weights on every worker
    device = ray.train.torch.get_device()

    def tensor(name: str) -> torch.Tensor:
        value = config[name]  # an object-store reference, or the array itself (local mode)
        value = ray.get(value) if isinstance(value, ray.ObjectRef) else value
        return torch.from_numpy(np.array(value))  # copied: object-store arrays are read-only

    x_train, y_train, x_val, y_val = (tensor(k) for k in ("x_train", "y_train", "x_val", "y_val"))
    x_train, y_train = x_train[rank::world].to(device), y_train[rank::world].to(device)
    x_val, y_val = x_val.to(device), y_val.to(device)

    model = ray.train.torch.prepare_model(TabularClassifier(ModelConfig(**config["model"])))
    optimiser = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    pos_weight = torch.tensor(config["pos_weight"], device=device)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    generator = torch.Generator().manual_seed(config["seed"] + rank)
    network = getattr(model, "module", model)
    best = loop.BestMembers(network.members)
    history: list[dict[str, float]] = []
    for epoch in range(1, config["epochs"] + 1):
        started = time.perf_counter()
        train_loss = loop.run_epoch(
            model, optimiser, loss_fn, x_train, y_train, config["batch_size"], generator
        )
        val_loss, val_auc, val_ap = loop.validate(model, loss_fn, x_val, y_val)
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_roc_auc": val_auc,
            "val_pr_auc": val_ap,
            "epoch_seconds": time.perf_counter() - started,
        }
        history.append(metrics)
        if rank == 0:
            print(
                f"[train] epoch {epoch}/{config['epochs']}  train_loss={train_loss:.4f}  "
                f"val_loss={val_loss:.4f}  val_roc_auc={val_auc:.4f}  val_pr_auc={val_ap:.4f}",
                flush=True,
            )
            best.offer(
                epoch,
                loop.member_losses(network, loss_fn, x_val, y_val),
                # As arrays: Ray Train refuses to return tensors from a worker.
                lambda: {
                    k: v.detach().cpu().numpy().copy() for k, v in network.state_dict().items()
                },
                last=epoch == config["epochs"],
            )
        ray.train.report(metrics)
    if rank != 0:
        return None
    # The kept weights together (an ensemble's members from their own best epochs), scored.
    network.load_state_dict({k: torch.from_numpy(v) for k, v in best.state.items()})
    val_loss, val_auc, val_ap = loop.validate(network, loss_fn, x_val, y_val)
    kept = {
        "epoch": int(np.median(best.epochs)),
        "val_loss": val_loss,
        "val_roc_auc": val_auc,
        "val_pr_auc": val_ap,
    }
    return {
        "metrics": kept,
        "state": best.state,
        "member_epochs": best.epochs.tolist(),
        "history": history,
    }


@contextlib.contextmanager
def _as_one_cpu_worker() -> Iterator[None]:
    """In local mode this process is the worker: one intra-op thread, as Ray gives a 1-CPU
    worker (``OMP_NUM_THREADS=1``), and without Ray Train's INFO line per report."""
    threads, logger = torch.get_num_threads(), logging.getLogger("ray.train")
    level = logger.level
    torch.set_num_threads(1)
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        logger.setLevel(level)


def _check_resources(params: TrainParams, resources: dict[str, float]) -> None:
    """Ray would wait forever for workers it cannot place; say so instead."""
    need = {"CPU": params.num_workers, **({"GPU": params.num_workers} if params.use_gpu else {})}
    for name, count in need.items():
        have = resources.get(name, 0.0)
        if have < count:
            raise TrainingResourceError(
                f"num_workers={params.num_workers}{' with use_gpu' if params.use_gpu else ''} "
                f"needs {count} {name}s but the Ray cluster has {have:g}"
            )


def prepare_arrays(
    frame: pd.DataFrame,
    schema: DatasetSchema,
    validation_fraction: float,
    distill_weight: float = 0.0,
) -> tuple[Preprocessor, pd.DataFrame, dict[str, np.ndarray]]:
    """Encoded training and validation arrays; with ``distill_weight`` the training targets
    are distilled toward the ``CHAMPION_SCORE`` column (validation keeps the labels)."""
    train, valid = loop.time_split(frame, schema, validation_fraction)
    pre = Preprocessor.fit(train, schema)
    y_train = train[schema.label].to_numpy(dtype=np.float32)
    if distill_weight > 0:
        if loop.CHAMPION_SCORE not in train:
            raise loop.TrainingDataError(
                f"distill_weight {distill_weight:g} needs the {loop.CHAMPION_SCORE!r} column "
                "(the features stage writes it when the run names the stable version)"
            )
        y_train = loop.distilled_targets(y_train, train[loop.CHAMPION_SCORE], distill_weight)
    arrays = {
        "x_train": pre.transform(train),
        "y_train": y_train,
        "x_val": pre.transform(valid),
        "y_val": valid[schema.label].to_numpy(dtype=np.float32),
    }
    return pre, valid, arrays


def train_model(
    frame: pd.DataFrame,
    schema: DatasetSchema,
    params: TrainParams,
    *,
    work_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> TrainOutcome:
    """Trains on ``frame`` (entity, timestamp, features, label) and returns the bundle."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from kubeloop.training.ray_runtime import connect, in_process_eligible

    pre, valid, arrays = prepare_arrays(
        frame, schema, params.validation_fraction, params.distill_weight
    )
    pos_weight = loop.positive_weight(arrays["y_train"])
    shift = loop.reweighting(arrays["y_train"], params.target_positive_rate)
    model_config = ModelConfig(
        n_inputs=pre.n_outputs, hidden_units=params.hidden_units, dropout=params.dropout,
        members=params.members,
    )  # fmt: skip
    log(
        f"[train] {len(arrays['y_train'])} training rows, {len(arrays['y_val'])} validation rows, "
        f"{pre.n_outputs} inputs, pos_weight={pos_weight:.1f}, workers={params.num_workers}"
        + (f", {params.members} ensemble members" if params.members > 1 else "")
    )
    if params.distill_weight > 0:
        log(
            f"[train] targets distilled toward the stable version's scores: "
            f"{1 - params.distill_weight:g} x label + {params.distill_weight:g} x "
            f"{loop.CHAMPION_SCORE}"
        )
    if shift is not None:
        log(
            f"[train] classes re-weighted from a positive rate of {shift.training_rate:.4f} to "
            f"{shift.target_rate:.4f} (positives x{shift.positive:.3f}, negatives "
            f"x{shift.negative:.3f})"
        )
    target = connect(in_process=in_process_eligible(params.num_workers, params.use_gpu))
    # Say where the run trains, and why when a configured Ray cluster was not used.
    log(f"[train] {target.describe()}")
    if target.remote:
        # A cluster's autoscaler (KubeRay's worker group) adds the GPUs or CPUs the run's
        # workers wait for, so what it has now is no limit.
        log(f"[train] the cluster has {ray.cluster_resources()} now; workers wait for the rest")
    elif not target.in_process:  # local mode: this process is the one worker
        _check_resources(params, ray.cluster_resources())
    refs = dict(arrays) if target.in_process else {k: ray.put(v) for k, v in arrays.items()}
    config = {
        **refs,
        "model": asdict(model_config),
        "pos_weight": pos_weight,
        "learning_rate": params.learning_rate,
        "batch_size": params.batch_size,
        "epochs": params.epochs,
        "seed": params.seed,
    }
    storage = RunStorage.for_target(target, work_dir)
    run_name = f"train-{int(time.time() * 1000)}"
    try:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=config,
            scaling_config=ScalingConfig(
                num_workers=0 if target.in_process else params.num_workers,
                use_gpu=params.use_gpu,
            ),
            run_config=RunConfig(
                name=run_name, storage_path=storage.path, storage_filesystem=storage.filesystem
            ),
        )
        started = time.perf_counter()
        with _as_one_cpu_worker() if target.in_process else contextlib.nullcontext():
            result = trainer.fit()
        fit_seconds = time.perf_counter() - started
        if result.error:
            raise RuntimeError(f"Ray Train failed: {result.error}")
        returned = result.return_value
        if not returned:
            raise RuntimeError("Ray Train's rank-0 worker returned no model")
        state = {k: torch.from_numpy(v) for k, v in returned["state"].items()}
        best_metrics, history = returned["metrics"], returned["history"]
    finally:
        refs.clear()
        storage.cleanup(run_name)

    network = TabularClassifier(model_config)
    network.load_state_dict(state)
    # Undo pos_weight's inflation of the odds so scores are calibrated probabilities (at
    # the target prior when the classes are re-weighted to one).
    with torch.no_grad():
        network.net[-1].bias += loop.prior_correction(pos_weight) + (
            shift.logit_offset if shift else 0.0
        )
    network.eval()
    bundle = ModelBundle(schema=schema, preprocessor=pre, config=model_config, network=network)
    val_scores = bundle.predict_proba(valid)
    threshold, threshold_by = loop.decision_threshold(
        arrays["y_val"], val_scores, shift.weights(arrays["y_val"]) if shift else None
    )
    bundle = replace(bundle, config=replace(model_config, threshold=threshold))
    metrics = {
        "best_epoch": int(best_metrics["epoch"]),
        "val_loss": float(best_metrics["val_loss"]),
        "val_roc_auc": float(best_metrics["val_roc_auc"]),
        "val_pr_auc": float(best_metrics["val_pr_auc"]),
        "threshold": threshold,
        # 1: the threshold is a Platt fit's on validation; 0: the most accurate cut there
        "threshold_platt": 1.0 if threshold_by == "platt" else 0.0,
        "pos_weight": pos_weight,
        **(
            {"target_positive_rate": shift.target_rate, "class_weight_ratio": shift.ratio}
            if shift
            else {}
        ),
        # the training targets' weight on the stable version's scores (distillation)
        **({"distill_weight": params.distill_weight} if params.distill_weight > 0 else {}),
        "train_rows": int(len(arrays["y_train"])),
        "validation_rows": int(len(arrays["y_val"])),
        "fit_seconds": fit_seconds,
        "members": params.members,
        # 1: trained on a Ray cluster; 0: in this pod (see TrainOutcome.ray for why).
        "ray_cluster": 1.0 if target.remote else 0.0,
        "ray_in_process": 1.0 if target.in_process else 0.0,  # Ray Train's local mode
    }
    if params.members > 1:
        log(f"[train] members' best epochs {returned['member_epochs']}")
    log(
        f"[train] best epoch {metrics['best_epoch']} (val_loss={metrics['val_loss']:.4f}, "
        f"val_roc_auc={metrics['val_roc_auc']:.4f}); threshold={threshold:.3f} ({threshold_by}); "
        f"fit {fit_seconds:.1f}s"
    )
    clean_history = [
        {k: v for k, v in row.items() if isinstance(v, int | float) and math.isfinite(v)}
        for row in history
    ]
    return TrainOutcome(
        bundle=bundle,
        metrics=metrics,
        history=clean_history,
        fit_seconds=fit_seconds,
        ray=target,
    )
