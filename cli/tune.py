"""``mimic-learn tune-static``: the tuned static baseline's tuning (Optuna TPE per regime, on validation, on
seeds the table does not use), written to the file the ``tuned_static`` arm of ``reproduce`` reads. The tuning
itself is ``experiments/tuned.py``; this parses the options and shows the trials' progress."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

from .options import DataDirOpt, Experiment, int_list
from .output import CellProgress, command_line, console, fail


def tune_static(
    ctx: typer.Context,
    experiment: Annotated[
        Experiment, typer.Argument(help="paper (Adam; lr 1e-4..1e-2) or blog (SGD; lr 1e-2..0.5).")
    ],
    regimes: Annotated[
        str, typer.Option(help="Comma-separated training-set sizes; one study each (e.g. 10,100,600).")
    ] = "100",
    trials: Annotated[
        int, typer.Option(min=1, help="Finished trials per regime (a resumed study counts its own).")
    ] = 20,
    seeds: Annotated[
        str,
        typer.Option(help="Tuning seeds, each trial trains all of them; never the table's seeds."),
    ] = "100,101",
    table_seeds: Annotated[
        str, typer.Option(help="The seeds tables use; tuning seeds inside them are refused.")
    ] = "0-99",
    task: Annotated[
        str | None,
        typer.Option(help="Override the task (paper: mnist; blog: cifar10; digits for a quick try)."),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(help="Override the epochs per trial (the experiment's, as reproduce runs them)."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Override the model (as reproduce --model).")] = None,
    val_size: Annotated[
        int | None, typer.Option(min=1, help="Override the validation split (default 5000).")
    ] = None,
    data_dir: DataDirOpt = "data",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads per trial.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="The tuned file (default docs/results/<experiment>_tuned.json).")
    ] = None,
    storage: Annotated[
        str, typer.Option(help="Optuna storage: an interrupted tuning resumes from it.")
    ] = "sqlite:///.mimic/tune_static.sqlite",
    sampler_seed: Annotated[int, typer.Option(help="The TPE sampler's seed.")] = 0,
    startup_trials: Annotated[
        int | None,
        typer.Option(
            min=1, help="TPE's random trials before it models the rest (default: a third of --trials, 1-10)."
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI: each trial a child run (default: not logged).")
    ] = None,
    mlflow_experiment: Annotated[
        str | None, typer.Option(help="MLflow experiment (default mimic-tune-static-<experiment>).")
    ] = None,
) -> None:
    """Tune lr, dropout and weight decay per regime with Optuna TPE on the validation split (mean final
    validation accuracy over the tuning seeds), resumable; writes the values the tuned_static arm trains with."""
    if importlib.util.find_spec("optuna") is None:
        from ..experiments.tuned import OPTUNA_MISSING

        fail(OPTUNA_MISSING)
    from ..experiments.tuned import TuneOptions
    from ..experiments.tuned import tune_static as run_tuning

    kind = experiment.value
    regime_list = [r.strip() for r in regimes.split(",") if r.strip()]
    options = TuneOptions(
        kind, regime_list, trials=trials, seeds=int_list(seeds, "--seeds"), task=task, data_dir=data_dir,
        epochs=epochs, threads=threads, model=model, val_size=val_size, out=out, storage=storage,
        sampler_seed=sampler_seed, startup_trials=startup_trials, table_seeds=int_list(table_seeds, "--table-seeds"), command=command_line(ctx),
        log_to_mlflow=tracking_uri is not None,
    )  # fmt: skip
    if tracking_uri is not None:
        from .. import tracking

        tracking.setup(tracking_uri, mlflow_experiment or f"mimic-tune-static-{kind}")
    try:
        with CellProgress(len(regime_list) * trials, description="trials") as bar:
            path = run_tuning(options, echo=bar.echo)
    except ValueError as exc:
        fail(str(exc))
    console.print(
        f"[bold]tuned values written to {path}[/]; use them: reproduce {kind} --arms ...,tuned_static"
    )
