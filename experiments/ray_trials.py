"""Cells as Ray Tune trials: one trial per cell (a function trainable running ``cells.run_cell``), PBT cells as
populations of their own, every failure recorded in the MLflow store.

    failed = run_cells_on_ray(cells, TrialResources(cpus=1), retries=1)   # under the active (parent) run
    reproduce(options, run_cells=ray_executor(num_cpus=8))               # a reproduction's cells on Ray

Tune retries a failed trial ``retries`` times (``FailureConfig``); a trial still failing is recorded in MLflow as
a FAILED run with the error in its ``mimic.error`` tag (a run left open by a killed worker is closed the same
way), and the rest goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..tracking.tags import ARM, CELL, ERROR, PARENT_RUN_ID, ROLE, ROLE_CHILD
from .ray_cluster import TrialResources, start_ray, trial_error, tune_storage
from .server import absolute_tracking_uri, tracking_server

if TYPE_CHECKING:
    from .cells import Cell


def _cell_trial(config: dict, cells: list[Cell], tracking_uri: str, experiment_id: str, parent_run_id: str):
    """One Ray Tune trial: one cell as an MLflow child run of the sweep's parent run."""
    import mlflow
    from ray import tune

    from .cells import run_cell

    cell = cells[config["cell"]]
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=experiment_id)
    run_id = run_cell(
        cell.spec, cell.arm, cell.experiment, cell.regime, cell.seed, parent_run_id=parent_run_id
    )
    metrics = mlflow.MlflowClient().get_run(run_id).data.metrics
    tune.report({"test_acc": float(metrics.get("test_acc", float("nan")))})


def _progress_callback(names: Callable[[Any], str], echo: Callable[[str], None]):
    from ray import tune

    class Progress(tune.Callback):
        """One line per finished, retried or failed trial (Tune's own table is switched off)."""

        def __init__(self, names: Callable[[Any], str], echo: Callable[[str], None]) -> None:
            self.names, self.echo = names, echo

        def __getstate__(self) -> dict:  # Tune pickles its run config (to resume); a console does not pickle
            return {"names": self.names}

        def __setstate__(self, state: dict) -> None:
            self.names, self.echo = state["names"], print

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.echo(f"done {self.names(trial)} in {(trial.last_result or {}).get('time_total_s', 0):.0f}s")

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.echo(f"retry {self.names(trial)} (attempt failed; Tune restarts it)")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.echo(f"failed {self.names(trial)}")

    return Progress(names, echo)  # as arguments: the class is pickled by value, and must not capture `echo`


def _run_pbt_cells(
    cells: list[Cell], resources: TrialResources, retries: int, storage: str, echo: Callable[[str], None]
) -> dict[str, str]:
    """PBT cells one after the other, each as its own population; returns {tag: error} of those that failed."""
    from .pbt import run_pbt_cell

    failures: dict[str, str] = {}
    for cell in cells:
        start = time.perf_counter()
        try:
            run_pbt_cell(cell, None, resources, storage, retries)
            echo(
                f"done {cell.tag} in {time.perf_counter() - start:.0f}s (PBT, population {cell.arm.population})"
            )
        except Exception as exc:  # the sweep goes on; the store and the report say what failed
            failures[cell.tag] = f"{type(exc).__name__}: {exc}"[:2000]
            echo(f"failed {cell.tag}: {failures[cell.tag]}")
    return failures


def run_cells_on_ray(
    cells: list[Cell],
    resources: TrialResources | None = None,
    retries: int = 1,
    storage_path: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, str]:
    """Run ``cells`` as Ray Tune trials under the active MLflow run (the parent); PBT cells run one after the
    other, each as its own population (with its arm's ``pbt`` settings). Failed cells are recorded in the
    store. Returns {cell tag: error}."""
    import mlflow

    resources = resources or TrialResources()
    parent = mlflow.active_run()
    if parent is None:
        raise RuntimeError("run_cells_on_ray needs an active MLflow run: the sweep's parent run")
    tracking_uri = absolute_tracking_uri(mlflow.get_tracking_uri())
    storage = tune_storage(storage_path)
    plain = [c for c in cells if not c.arm.population]
    failures: dict[str, str] = {}
    # Trials log over HTTP: a sqlite store is served by `mlflow server` on 127.0.0.1 while they run (server.py).
    serve = tracking_uri.startswith("sqlite:") and bool(plain)
    with tracking_server(tracking_uri) if serve else nullcontext(tracking_uri) as trial_uri:
        if plain:
            failures |= _run_trials(plain, resources, retries, storage, echo, trial_uri, parent)
    # PBT members log nothing themselves: each PBT cell is logged from here
    failures |= _run_pbt_cells([c for c in cells if c.arm.population], resources, retries, storage, echo)
    record_failures(cells, failures, parent.info.experiment_id, parent.info.run_id)
    return failures


def _run_trials(cells, resources, retries, storage, echo, tracking_uri, parent) -> dict[str, str]:
    """Cells of one trial each as one Tune experiment (a grid over their indices); returns {tag: error}."""
    from ray import tune

    tag_of = lambda trial: cells[trial.config["cell"]].tag  # noqa: E731
    trainable = tune.with_resources(
        tune.with_parameters(
            _cell_trial,
            cells=cells,
            tracking_uri=tracking_uri,
            experiment_id=parent.info.experiment_id,
            parent_run_id=parent.info.run_id,
        ),
        resources.as_dict(),
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"cell": tune.grid_search(list(range(len(cells))))},
        tune_config=tune.TuneConfig(
            reuse_actors=True,  # one worker process per slot, not one per trial (imports cost seconds)
            trial_name_creator=lambda t: tag_of(t).replace("/", "_"),
            trial_dirname_creator=lambda t: tag_of(t).replace("/", "_"),
        ),
        run_config=tune.RunConfig(
            name=f"{cells[0].experiment}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=retries),
            callbacks=[_progress_callback(tag_of, echo)],
            verbose=0,
        ),
    )
    return {cells[r.config["cell"]].tag: trial_error(r.error) for r in tuner.fit() if r.error is not None}


def record_failures(
    cells: list[Cell], failures: dict[str, str], experiment_id: str, parent_run_id: str
) -> None:
    """Make every failure visible in the store: a run a killed worker left RUNNING is closed as FAILED, and a
    failed cell that never opened a run (it failed before training started) gets a FAILED run with the error."""
    import mlflow
    from mlflow.entities import RunStatus

    from .cells import cell_tags

    client = mlflow.MlflowClient()
    by_tag = {c.tag: c for c in cells}
    children = client.search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=50000
    )
    for run in children:
        tag = run.data.tags.get(CELL)
        if run.info.status == "RUNNING" and tag in by_tag:
            why = failures.get(
                tag, "the trial's worker stopped before the run ended (killed or out of memory)"
            )
            client.set_tag(run.info.run_id, ERROR, why)
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
    recorded = {r.data.tags.get(CELL) for r in children if r.info.status in ("FAILED", "RUNNING")}
    for tag, error in failures.items():
        if tag in recorded:
            continue
        cell = by_tag[tag]
        tags = cell_tags(cell.experiment, cell.regime, cell.arm.name, cell.seed) | {
            PARENT_RUN_ID: parent_run_id,
            ROLE: ROLE_CHILD,
            ARM: f"{cell.arm.name}-{cell.regime}-s{cell.seed}",
            ERROR: error,
        }
        run = client.create_run(experiment_id, run_name=tags[ARM], tags=tags)
        client.log_batch(
            run.info.run_id,
            params=[mlflow.entities.Param(k, v[:6000]) for k, v in cell.spec.as_params().items()],
        )
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))


def ray_executor(
    address: str | None = None,
    num_cpus: int | None = None,
    resources: TrialResources | None = None,
    retries: int = 1,
    echo: Callable[[str], None] = print,
) -> Callable[[list[Cell]], dict[str, str]]:
    """``reproduce(run_cells=...)``: run a reproduction's cells as Ray Tune trials."""
    from .spec import absolute_controller

    def run(cells: list[Cell]) -> dict[str, str]:
        resources_ = resources or TrialResources()
        threads = max(1, int(resources_.cpus))
        state_dir = Path(".mimic/sweeps").resolve() / cells[0].experiment
        cells = [
            replace(
                c,
                spec=replace(
                    c.spec,
                    state_db=str(state_dir / f"{c.tag.replace('/', '_')}.sqlite"),
                    train=replace(
                        c.spec.train,
                        num_threads=c.spec.train.num_threads or threads,
                        data_dir=str(Path(c.spec.train.data_dir).resolve()),
                    ),
                    controller=absolute_controller(c.spec.controller, Path.cwd()),
                ),
            )
            for c in cells
        ]
        started = start_ray(address, num_cpus)
        try:
            return run_cells_on_ray(cells, resources_, retries, None, echo)
        finally:
            if started:
                import ray

                ray.shutdown()

    return run
