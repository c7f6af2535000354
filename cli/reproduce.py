"""``mimic-learn reproduce`` (the paper's or the blog's table, resumable, locally or on Ray) and ``mimic-learn
sweep`` (a spec's arms x regimes x seeds as Ray Tune trials). The experiments themselves are in
``experiments``/``sweep``; these parse the options and show the cells' progress."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from .options import (
    AddressOpt,
    CpusPerTrialOpt,
    DataDirOpt,
    Executor,
    Experiment,
    GpusPerTrialOpt,
    NumCpusOpt,
    PriceInOpt,
    PriceOutOpt,
    TrackingOpt,
    int_list,
)
from .output import CellProgress, command_line, console, fail


def require_ray() -> None:
    """Fail with the install hint when Ray is missing."""
    import importlib.util

    from ..experiments import RAY_MISSING

    if importlib.util.find_spec("ray") is None:
        fail(RAY_MISSING)


CLUSTER_NEEDS_SERVER = (
    "--address joins a Ray cluster whose trials may run on other machines: they need an MLflow server every node "
    "reaches. Start one (`mlflow server --host 0.0.0.0 --port 5000 --backend-store-uri sqlite:///mlflow.db`) and "
    "pass --tracking-uri http://<that-host>:5000"
)


def count_cells(kind: str, regimes: list[str], seeds: list[int], arms: str) -> int:
    """How many cells (regime x seed x arm) a reproduction covers; unknown arm names are the experiment's to
    reject, so they are not counted."""
    from ..experiments import BLOG_ARMS, PAPER_ARMS, known_arms

    known = {a.name for a in known_arms(kind)}
    names = [a for a in arms.split(",") if a]
    count = (
        len([a for a in names if a in known]) if names else len(PAPER_ARMS if kind == "paper" else BLOG_ARMS)
    )
    return len(regimes) * len(seeds) * count


def reproduce(
    ctx: typer.Context,
    experiment: Annotated[
        Experiment,
        typer.Argument(help="paper: MIMIC-Learn MNIST table; blog: ResNet-18 CIFAR-10 LR-control table."),
    ],
    regimes: Annotated[
        str,
        typer.Option(
            help="Comma-separated training-set sizes (paper default: full,6000,600,100,10; blog: full)."
        ),
    ] = "",
    seeds: Annotated[
        str,
        typer.Option(
            help="Seeds, comma-separated or as ranges (0-9); the same data subset and initial weights across arms."
        ),
    ] = "0,1,2",
    arms: Annotated[str, typer.Option(help="Comma-separated subset of arms (default: all).")] = "",
    controller: Annotated[
        str | None,
        typer.Option(help="Controller for the LLM arms (default: local if installed, else rules)."),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            help="Override the task (paper: mnist; blog: cifar10, or mnist32 as an offline proxy, synthetic for tests)."
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(help="Override the epochs per cell (paper: 5 for full/6000, 30 below; blog: 20)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Override the model (paper: paper_cnn; blog: resnet18_cifar, the CIFAR stem; resnet18, the "
            "ImageNet stem, is about 10x cheaper per image, for CPU proxies). Use a separate --mlflow-experiment "
            "per model: cells are keyed by experiment, regime, arm and seed."
        ),
    ] = None,
    val_size: Annotated[
        int | None,
        typer.Option(min=1, help="Override the validation split held out from train (default 5000)."),
    ] = None,
    data_dir: DataDirOpt = "data",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads per run.")] = None,
    force: Annotated[bool, typer.Option(help="Rerun cells already finished in the MLflow store.")] = False,
    report_only: Annotated[
        bool, typer.Option(help="Run nothing: rebuild the report from the cells already in the store.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Markdown report path (default docs/results/<experiment>.md).")
    ] = None,
    tracking_uri: TrackingOpt = "sqlite:///mlflow.db",
    mlflow_experiment: Annotated[
        str | None, typer.Option(help="MLflow experiment (default mimic-reproduce-<experiment>).")
    ] = None,
    model_path: Annotated[
        str | None, typer.Option(help="For --controller local: any GGUF chat model file.")
    ] = None,
    executor: Annotated[
        Executor,
        typer.Option(
            help="local: cells one after the other in this process; ray: each cell a Ray Tune trial (see `sweep`)."
        ),
    ] = Executor.local,
    address: AddressOpt = None,
    num_cpus: NumCpusOpt = None,
    cpus_per_trial: CpusPerTrialOpt = 1.0,
    gpus_per_trial: GpusPerTrialOpt = 0.0,
    price_in: PriceInOpt = None,
    price_out: PriceOutOpt = None,
    start: Annotated[
        str,
        typer.Option(
            help="Comma-separated starting configurations: published (default), lr_x30, lr_div100, dropout_0.7 "
            "(mis-tuned starts; each arm runs from each, named <arm>@<start>)."
        ),
    ] = "published",
    fixed_subset: Annotated[
        bool,
        typer.Option(
            help="One training subset (data seed 0) for every seed; seeds then vary weights and batch order only. "
            "Use a separate --mlflow-experiment and --out: cells are keyed without it (a store holding the other "
            "mode's cells is refused)."
        ),
    ] = False,
    tuned_file: Annotated[
        Path | None,
        typer.Option(
            help="The tuned_static arm's values (default docs/results/<experiment>_tuned.json, written by "
            "`mimic-learn tune-static`); a regime it lacks is reported not run, with the command that tunes it."
        ),
    ] = None,
    from_cells: Annotated[
        Path | None,
        typer.Option(
            help="Run nothing and use no MLflow store: build the report from this per-cell CSV "
            "(docs/results/<experiment>_cells.csv, written by every reproduce)."
        ),
    ] = None,
    notes: Annotated[
        Path | None,
        typer.Option(
            help="With --from-cells: a Markdown file placed under the report's header (how and where the cells "
            "were produced, the sittings' commands), kept when the report is rebuilt."
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Run nothing: print the cells, the controller decisions and the estimated tokens and cost.",
        ),
    ] = False,
) -> None:
    """Reproduce a published experiment side by side with its numbers; resumable (finished cells are skipped).
    The arm `pbt` (Population Based Training, needs Ray) is added with --arms ...,pbt."""
    kind = experiment.value
    default_regimes = "full,6000,600,100,10" if kind == "paper" else "full"
    regime_list = [r.strip() for r in (regimes or default_regimes).split(",") if r.strip()]
    seed_list = int_list(seeds, "--seeds")
    start_list = [x.strip() for x in start.split(",") if x.strip()] or ["published"]
    n_cells = count_cells(kind, regime_list, seed_list, arms) * len(start_list)
    bar = CellProgress(0 if report_only else n_cells)
    run_cells, server = _executor(ctx, bar)
    _check_starts(start_list)
    command = command_line(ctx)
    report = out or Path("docs/results") / f"{kind}.md"
    arm_list = [a for a in arms.split(",") if a] or None
    if from_cells is not None:
        _report_from_cells(kind, from_cells, report, command, regimes, arm_list, notes, tuned_file)
        return
    p = ctx.params
    if dry_run:
        _print_plan(kind, regime_list, seed_list, arm_list, start_list, p, report)
        return
    cells = dict(regimes=regime_list, seeds=seed_list, arms=arm_list, starts=start_list, out=report)
    path = _run_reproduce(kind, cells, p, command, bar, run_cells, server)
    console.print(f"[bold]report written to {path}[/]")


def _executor(ctx: typer.Context, bar: CellProgress):
    """(run_cells, server) for --executor: (None, the store) locally; on Ray, the trial executor (its
    'done'/'failed' lines advance ``bar``) and an MLflow server over the default store for the trials."""
    from click.core import ParameterSource

    p = ctx.params
    tracking_uri = p["tracking_uri"]
    run_cells, server = None, nullcontext(tracking_uri)
    if p["executor"] == Executor.ray or "pbt" in p["arms"].split(","):
        require_ray()
    if p["executor"] == Executor.ray:
        from ..experiments import TrialResources, ray_executor, tracking_server

        default_store = ctx.get_parameter_source("tracking_uri") == ParameterSource.DEFAULT
        if p["address"] and tracking_uri.startswith("sqlite:"):  # the default is one too
            fail(CLUSTER_NEEDS_SERVER)
        if default_store:  # trials log over HTTP to one server on this machine
            server = tracking_server(tracking_uri)
        resources = TrialResources(p["cpus_per_trial"], p["gpus_per_trial"])
        run_cells = ray_executor(p["address"], p["num_cpus"], resources, echo=bar.echo)
    return run_cells, server


def _check_starts(starts: list[str]) -> None:
    from ..experiments import START_VARIANTS

    bad_starts = [x for x in starts if x not in START_VARIANTS]
    if bad_starts:
        fail(f"--start {','.join(bad_starts)} is not a start; choose from {', '.join(START_VARIANTS)}")


def _report_from_cells(
    kind: str,
    cells: Path,
    out: Path,
    command: str,
    regimes: str,
    arms,
    notes: Path | None,
    tuned: Path | None,
) -> None:
    """--from-cells: the report from a per-cell CSV, no MLflow store."""
    from ..experiments import report_from_cells

    if not cells.is_file():
        fail(f"--from-cells {cells}: no such file")
    if notes is not None and not notes.is_file():
        fail(f"--notes {notes}: no such file")
    try:
        report_from_cells(
            kind, cells, out, command, [r.strip() for r in regimes.split(",") if r.strip()] or None, arms,
            echo=console.print, tuned_file=tuned, notes=notes.read_text().strip() if notes else "",
        )  # fmt: skip
    except ValueError as exc:
        fail(str(exc))


def _provider(p: dict):
    from ..agents.providers import ProviderOptions

    return ProviderOptions(
        model_path=p["model_path"], price_in_per_m=p["price_in"], price_out_per_m=p["price_out"]
    )


def _print_plan(
    kind: str, regimes: list[str], seeds: list[int], arms, starts: list[str], p: dict, report: Path
) -> None:
    """--dry-run: the cells, the controller decisions and the estimated tokens and cost; the time estimate is
    calibrated on the report's per-cell file when it has finished cells of the same work."""
    from ..agents.providers import default_controller
    from ..experiments import cells_csv_path, describe_plan, plan_reproduce

    same_work = p["model"] is None and p["val_size"] is None and not p["fixed_subset"]
    try:
        plan = plan_reproduce(
            kind, regimes, seeds, arms, p["controller"] or default_controller(), p["epochs"], _provider(p),
            starts=starts, tuned_file=p["tuned_file"], task=p["task"],
            cells_csv=cells_csv_path(report) if same_work else None,
        )  # fmt: skip
    except ValueError as exc:
        fail(str(exc))
    console.print(describe_plan(plan), highlight=False, soft_wrap=True)


def _run_reproduce(
    kind: str, cells: dict, p: dict, command: str, bar: CellProgress, run_cells, server
) -> Path:
    """Run (or skip, when finished) every cell under one parent run; returns the report's path."""
    from .. import tracking
    from ..agents.providers import default_controller
    from ..experiments import ReproduceOptions, task_for
    from ..experiments import reproduce as run_reproduce
    from ..training import DataUnavailableError

    tracking_uri = p["tracking_uri"]
    task = task_for(kind, p["task"])
    try:
        with server as uri:
            if uri != tracking_uri:
                console.print(f"MLflow server {uri} over {tracking_uri} (for this command's trials)")
            tracking.setup(uri, p["mlflow_experiment"] or f"mimic-reproduce-{kind}")
            with bar:
                options = ReproduceOptions(
                    kind, cells["regimes"], cells["seeds"], arm_names=cells["arms"],
                    controller=p["controller"] or default_controller(), data_dir=p["data_dir"],
                    epochs=p["epochs"], threads=p["threads"], force=p["force"], out=cells["out"], task=task,
                    command=command, provider=_provider(p), report_only=p["report_only"], model=p["model"],
                    val_size=p["val_size"], starts=cells["starts"], fixed_subset=p["fixed_subset"],
                    tuned_file=p["tuned_file"],
                )  # fmt: skip
                return run_reproduce(options, echo=bar.echo, run_cells=run_cells)
    except DataUnavailableError as exc:
        hint = (
            " For the blog experiment without CIFAR-10, use --task mnist32 (an offline proxy)."
            if kind == "blog"
            else ""
        )
        fail(f"{exc}{hint}")
    except (ValueError, RuntimeError) as exc:
        fail(str(exc))


def sweep(
    ctx: typer.Context,
    spec: Annotated[
        Path,
        typer.Argument(
            help="Sweep spec (YAML): name, task, regime, epochs, seeds, arms (controller, reflection, prompt, "
            "or pbt). Format: `python -c 'import mimic_learn.experiments.spec as s; help(s)'` or the README."
        ),
    ],
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            help="MLflow tracking URI for every trial (default: start `mlflow server` on 127.0.0.1 over sqlite:///mlflow.db)."
        ),
    ] = None,
    mlflow_experiment: Annotated[
        str | None, typer.Option(help="MLflow experiment (default mimic-sweep-<name>).")
    ] = None,
    address: AddressOpt = None,
    num_cpus: NumCpusOpt = None,
    cpus_per_trial: CpusPerTrialOpt = 1.0,
    gpus_per_trial: GpusPerTrialOpt = 0.0,
    retries: Annotated[int, typer.Option(min=0, help="Times Tune retries a failed trial.")] = 1,
    force: Annotated[bool, typer.Option(help="Rerun cells already finished in the MLflow store.")] = False,
    out: Annotated[
        Path | None, typer.Option(help="Markdown report path (default docs/results/<name>.md).")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Ray Tune storage for trial folders and PBT checkpoints (default .mimic/ray_results; on a "
            "multi-node cluster a path or s3:// URI every node reaches)."
        ),
    ] = None,
) -> None:
    """Run every arm x regime x seed of a spec as Ray Tune trials (PBT arms as populations), all logging to one
    MLflow store under one parent run; failed trials are retried, then recorded; the report lists missing cells."""
    from ..experiments import TrialResources, load_spec, run_sweep, tracking_server

    try:
        parsed = load_spec(spec)
    except ValueError as exc:
        fail(str(exc))
    require_ray()
    if address and (tracking_uri is None or tracking_uri.startswith("sqlite:")):
        fail(CLUSTER_NEEDS_SERVER)
    server = tracking_server() if tracking_uri is None else nullcontext(tracking_uri)
    try:
        with server as uri:
            if tracking_uri is None:
                console.print(f"MLflow server {uri} over sqlite:///mlflow.db (stops with the sweep)")
            with CellProgress(len(parsed.regimes) * len(parsed.seeds) * len(parsed.arms)) as bar:
                outcome = run_sweep(
                    parsed, spec.resolve().parent, uri, mlflow_experiment, address, num_cpus,
                    TrialResources(cpus_per_trial, gpus_per_trial), retries, force, out, storage,
                    command=command_line(ctx), echo=bar.echo,
                )  # fmt: skip
    except (ValueError, RuntimeError) as exc:
        fail(str(exc))
    store = tracking_uri or "sqlite:///mlflow.db"
    total = len(outcome.ran) + len(outcome.skipped)
    console.print(
        f"[bold]{total - len(outcome.missing)} of {total} cells finished[/]; report {outcome.report}; "
        f"MLflow parent run {outcome.parent_run_id} in {store}"
    )
    if outcome.missing:
        console.print(f"[yellow]{len(outcome.missing)} cells missing:[/]")
        for tag, why in sorted(outcome.missing.items()):
            console.print(f"  {tag}: {why[:200]}", highlight=False)
