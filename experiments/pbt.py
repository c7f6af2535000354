"""Population Based Training (PBT), the classical rival of an LLM controller: one cell is one Ray Tune experiment.

A ``pbt`` arm's cell trains ``population`` members from lr / dropout / weight decay drawn from the arm's ranges
(log-uniform, uniform, log-uniform) with the cell's seed (same data subset and initial weights as every other
arm), one epoch per ``tune.report``; every ``perturbation_interval`` epochs the bottom quarter copies a
top-quarter member's checkpoint (``Trainer.checkpoint`` / ``restore``) and perturbs its hyperparameters (x1.2 /
x0.8, or a resample). The cell's MLflow run is the member with the best final validation accuracy, with its full
lineage (per-epoch metrics of the weights it ended with, ``pbt_lineage.json``) and the whole population
(``pbt_population.json``). Compute: a PBT cell costs ``population`` trials; reports say so.

A member's process (restarted at every exploit) imports this module: MLflow, LangGraph and the agents are
imported where they are used, so that it loads only torch, Ray and the trainer.
"""

from __future__ import annotations

import functools
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..training.config import TrainConfig
from .ray_cluster import TrialResources, start_ray, trial_error, tune_storage

if TYPE_CHECKING:
    from .arms import PbtSettings
    from .cells import Cell


def clip_config(config: dict, bounds: dict[str, tuple[float, float]]) -> dict:
    """PBT's x1.2 / x0.8 perturbations may leave the search range; keep every value inside it."""
    for key, (low, high) in bounds.items():
        if key in config:
            config[key] = min(max(float(config[key]), low), high)
    return config


def pbt_member(config: dict, train: TrainConfig, interval: int) -> None:
    """One PBT member: trains epoch by epoch, reports validation accuracy, checkpoints every ``interval`` epochs;
    after an exploit it continues from the copied member's checkpoint with its own (perturbed) hyperparameters."""
    import torch
    from ray import tune

    from ..training.trainer import Trainer

    knobs = {k: config[k] for k in ("lr", "dropout", "weight_decay") if k in config}
    trainer = Trainer.from_config(replace(train, **knobs))
    lineage: list[dict] = []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = Trainer.load_checkpoint(Path(folder) / "member.pt")
        trainer.restore(state["trainer"])
        lineage = list(state["lineage"])
        trainer.set_lr(knobs["lr"])
        trainer.set_weight_decay(knobs["weight_decay"])
        if "dropout" in knobs:
            trainer.set_dropout(knobs["dropout"])
    if not lineage or any(abs(lineage[-1][k] - v) > 1e-15 for k, v in knobs.items()):
        lineage.append({"epoch": trainer.epoch, **knobs})
    while trainer.epoch < train.epochs:
        report = trainer.run_epoch()
        metrics = {"val_acc": report.val_acc, "val_loss": report.val_loss, "epoch": trainer.epoch}
        last = trainer.epoch == train.epochs
        if not (last or trainer.epoch % interval == 0):
            tune.report(metrics)
            continue
        state = {"trainer": trainer.checkpoint(), "lineage": lineage}
        if last:
            test = trainer.test()
            state["test"] = {"acc": test.acc, "loss": test.loss}
            metrics["test_acc"] = test.acc
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / "member.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def has_dropout(train: TrainConfig) -> bool:
    """Whether the model of ``train`` has dropout layers (PBT searches dropout only then)."""
    from ..training.models import DEFAULT_MODEL, build_model, dropout_modules

    return bool(dropout_modules(build_model(train.model or DEFAULT_MODEL[train.task], 10, train.dropout)))


def search_bounds(settings: PbtSettings, train: TrainConfig) -> dict[str, tuple[float, float]]:
    """The ranges PBT searches: lr and weight decay, and dropout where the model has any."""
    bounds = {"lr": settings.lr, "weight_decay": settings.weight_decay}
    if has_dropout(train):
        bounds["dropout"] = settings.dropout
    return bounds


def fit_population(
    cell: Cell,
    settings: PbtSettings,
    train: TrainConfig,
    bounds: dict[str, tuple[float, float]],
    resources: TrialResources,
    storage: str,
    retries: int,
) -> Any:
    """Train the population with Tune's PBT scheduler on the running Ray (seeded by the caller); returns Tune's
    ResultGrid."""
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    interval = settings.interval(train.epochs)
    space = {k: (tune.uniform(*v) if k == "dropout" else tune.loguniform(*v)) for k, v in bounds.items()}
    scheduler = PopulationBasedTraining(
        time_attr="training_iteration",
        perturbation_interval=interval,
        hyperparam_mutations=space,
        custom_explore_fn=functools.partial(clip_config, bounds=bounds),
    )
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(pbt_member, train=train, interval=interval), resources.as_dict()
        ),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="val_acc",
            mode="max",
            scheduler=scheduler,
            num_samples=settings.population,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"{cell.tag.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4),
            verbose=0,
        ),
    )
    return tuner.fit()


def log_pbt_cell(
    cell: Cell,
    settings: PbtSettings,
    interval: int,
    bounds: dict[str, tuple[float, float]],
    state: dict,
    population: list[dict],
    t0: float,
) -> str:
    """The best member as the cell's child run of the active run: its lineage's metrics, test accuracy, the
    population, and the cell's wall time (the run is dated from when the population started)."""
    import mlflow

    from .. import tracking  # here, not at the top: a PBT member's process imports this module without MLflow
    from ..tracking.tags import ARM, COMPUTE_TRIALS, PARENT_RUN_ID, PBT_POPULATION, ROLE, ROLE_CHILD
    from ..training.reports import EpochReport
    from .cells import cell_tags

    parent = mlflow.active_run()
    tags = cell_tags(cell.experiment, cell.regime, cell.arm.name, cell.seed) | {
        ROLE: ROLE_CHILD,
        ARM: f"{cell.arm.name}-{cell.regime}-s{cell.seed}",
        PBT_POPULATION: str(settings.population),
        COMPUTE_TRIALS: str(settings.population),
    }
    tags[PARENT_RUN_ID] = parent.info.run_id
    created = mlflow.MlflowClient().create_run(
        parent.info.experiment_id, start_time=int(t0 * 1000), tags=tags, run_name=tags[ARM]
    )
    with mlflow.start_run(run_id=created.info.run_id, nested=True) as run:
        mlflow.set_tags(tracking.version_tags() | tags)
        params = cell.spec.as_params() | {
            "pbt.population": str(settings.population),
            "pbt.perturbation_interval": str(interval),
            **{f"pbt.range.{k}": str(list(v)) for k, v in bounds.items()},
        }
        mlflow.log_params(params)
        from types import SimpleNamespace

        reports = state["trainer"]["history"]
        for row in reports:
            outcome = SimpleNamespace(report=EpochReport(**row), state=None, guard_rollbacks=0)
            mlflow.log_metrics(tracking.epoch_metrics(outcome), step=row["epoch"])
        mlflow.log_metrics(
            {
                "test_acc": state["test"]["acc"],
                "test_loss": state["test"]["loss"],
                "pbt_wall_s": time.time() - t0,
            }
        )
        mlflow.log_dict({"lineage": state["lineage"]}, "pbt_lineage.json")
        mlflow.log_dict({"members": population}, "pbt_population.json")
        tracking.log_plots({tags[ARM]: reports})
    return run.info.run_id


def run_pbt_cell(
    cell: Cell,
    settings: PbtSettings | None = None,
    resources: TrialResources | None = None,
    storage_path: str | None = None,
    retries: int = 1,
) -> str:
    """One PBT cell: a population trained with Ray Tune's PBT scheduler, logged as one child run of the active
    MLflow run (the best member by final validation accuracy). Starts Ray here if none is running.
    ``settings``: default the arm's own (``Arm.pbt``)."""
    import mlflow
    import numpy as np

    from ..training.trainer import Trainer
    from .arms import PbtSettings

    if mlflow.active_run() is None:
        raise RuntimeError(
            "run_pbt_cell logs the cell as a child of the active MLflow run; start the parent first"
        )
    settings = settings or cell.arm.pbt or PbtSettings()
    resources = resources or TrialResources()
    train = cell.spec.train
    if train.num_threads is None:
        train = replace(train, num_threads=max(1, int(resources.cpus)))
    bounds = search_bounds(settings, train)
    # The initial population and PBT's random choices follow the cell's seed; Tune runs members
    # asynchronously, so two sittings can still differ in when a member exploits another.
    random.seed(cell.seed)
    np.random.seed(cell.seed)
    started = start_ray()
    storage = tune_storage(storage_path)
    t0 = time.time()
    try:
        grid = fit_population(cell, settings, train, bounds, resources, storage, retries)
    finally:
        if started:
            import ray

            ray.shutdown()
    done = [
        r
        for r in grid
        if r.error is None and r.checkpoint is not None and r.metrics.get("test_acc") is not None
    ]
    if not done:
        errors = "; ".join(trial_error(r.error) for r in grid if r.error is not None)
        raise RuntimeError(f"no PBT member of {cell.tag} finished ({errors or 'no checkpoint'})")
    best = max(done, key=lambda r: r.metrics["val_acc"])
    with best.checkpoint.as_directory() as folder:
        state = Trainer.load_checkpoint(Path(folder) / "member.pt")
    population = [
        {
            "member": r.path.rsplit("/", 1)[-1] if r.path else "",
            "final_config": {k: r.config.get(k) for k in bounds},
            "final_val_acc": r.metrics.get("val_acc"),
            "test_acc": r.metrics.get("test_acc"),
            "error": trial_error(r.error),
        }
        for r in grid
    ]
    return log_pbt_cell(cell, settings, settings.interval(train.epochs), bounds, state, population, t0)
