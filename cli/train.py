"""``mimic-learn train`` (a baseline arm, no agent) and ``mimic-learn run`` (the agent decides at every epoch
boundary): options in, a ``RunSpec`` out, the run printed epoch by epoch and tracked in MLflow."""

from __future__ import annotations

import uuid
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from .options import (
    BatchSizeOpt,
    Critic,
    DataDirOpt,
    DownloadOpt,
    EpochsOpt,
    ExperimentOpt,
    LrOpt,
    Optim,
    OptimizerOpt,
    PriceInOpt,
    PriceOutOpt,
    RareClassOpt,
    RegimeOpt,
    RequestTimeoutOpt,
    Schedule,
    ScheduleOpt,
    SeedOpt,
    Task,
    TaskOpt,
    ThreadsOpt,
    TrackingOpt,
    TrackOpt,
    ValSizeOpt,
    WeightDecayOpt,
)
from .output import ConsoleObserver, console, fail


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
    rare_class: RareClassOpt = None,
    track: TrackOpt = True,
    tracking_uri: TrackingOpt = "sqlite:///mlflow.db",
    experiment: ExperimentOpt = None,
) -> None:
    """Train without an agent (a baseline arm): one summary line per epoch, test accuracy at the end."""
    from ..graphs.runner import RunSpec

    cfg = train_config(ctx.params)
    run_and_track(
        RunSpec(train=cfg, controller="none"),
        f"baseline-s{seed}",
        tracking_uri,
        experiment,
        True,
        False,
        track,
    )


def run(
    ctx: typer.Context,
    task: TaskOpt = Task.digits,
    regime: RegimeOpt = "full",
    epochs: EpochsOpt = 5,
    controller: Annotated[
        str | None,
        typer.Option(
            help="Who decides: local (embedded SmolLM2 with its shipped adapter smollm2-bank-v2, offline; local:adapter=none for the bare model, local:adapter=<path|name> for another), rules, scripted:<file>, openai:gpt-4o, google_genai:gemini-2.5-flash, openai-compatible:<model>@<url>, none. Default: local if installed, else rules. "
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
            help="Let the controller model write the reflection's critique (the paper's: the model judges its previous decision); same as --critic llm."
        ),
    ] = False,
    critic: Annotated[
        Critic,
        typer.Option(
            help="Who writes the reflection's critique, whatever the --reflection policy: numbers (a verdict from "
            "before/after metrics) or llm (the controller model, behind its retries and fallback; if it fails, "
            "the numbers' verdict)."
        ),
    ] = Critic.numbers,
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
    rare_class: RareClassOpt = None,
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
    load_tools_modules(tools_module)
    spec, arm = run_spec(ctx.params)
    run_and_track(spec, arm, tracking_uri, experiment, log_model, traces, track)


def run_spec(params: dict):
    """The ``RunSpec`` of ``run``'s options (``ctx.params``) and the arm's name; fails on options that clash."""
    from ..agents.providers import ProviderOptions, default_controller, default_prompt
    from ..graphs.graph import AgentConfig
    from ..graphs.runner import RunSpec

    p = params
    controller = p["controller"] or default_controller()
    prompt = p["prompt"] or default_prompt(controller, p["model_path"])
    instruction = read_instruction(p["instruction"], p["instruction_file"])
    # Trainer checkpoints every epoch, next to the graph's state, so that `mimic-learn resume` can continue; it
    # finds them through the MLflow run, so an untracked run writes none (nothing could resume it).
    thread_id = f"run-{uuid.uuid4().hex[:12]}"
    checkpoint_dir = str(Path(p["state_db"]).parent / "checkpoints" / thread_id) if p["track"] else None
    try:
        cfg = train_config(p, checkpoint_dir)
    except ValueError as exc:
        fail(str(exc))
    spec = RunSpec(
        train=cfg,
        controller=controller,
        agent=AgentConfig(
            prompt=prompt,
            reflection=p["reflection"],
            budget=p["budget"],
            decision_timeout_s=p["decision_timeout"],
            critic="llm" if p["llm_critic"] else Critic(p["critic"]).value,
            approve=p["approve"],
            instruction=instruction,
        ),
        provider=ProviderOptions(
            fallback=None if p["fallback"] == "none" else p["fallback"],
            model_path=p["model_path"],
            retries=p["retries"],
            max_retry_after_s=p["max_retry_after"],
            price_in_per_m=p["price_in"],
            price_out_per_m=p["price_out"],
            timeout_s=p["request_timeout"],
        ),
        every=p["every"],
        state_db=p["state_db"],
        thread_id=thread_id,
        keep_checkpoint_dir=p["keep_checkpoint_dir"],
        counterfactual_horizon=p["counterfactual_horizon"],
        keep_better=p["keep_better"],
    )
    if (p["counterfactual_horizon"] != 1 or p["keep_better"]) and p["reflection"] != "counterfactual":
        fail(
            f"--counterfactual-horizon={p['counterfactual_horizon']} / --keep-better act only with --reflection "
            f"counterfactual; current --reflection is {p['reflection']}"
        )
    return spec, f"{controller.split('/')[-1]}-{p['reflection']}-{prompt}-s{p['seed']}"


def load_tools_modules(modules: list[str] | None) -> None:
    """Import the extra tools of ``--tools-module`` (files or modules); fails naming the one that breaks."""
    from ..tools import load_tools_module

    for module in modules or []:
        try:
            load_tools_module(module)
        except Exception as exc:
            fail(f"could not import tools from {module}: {exc}")


def read_instruction(text: str | None, path: Path | None) -> str | None:
    """The instruction from --instruction or --instruction-file (not both); None when neither is given."""
    if text is not None and path is not None:
        fail("give --instruction or --instruction-file, not both")
    if path is not None:
        if not path.is_file():
            fail(f"--instruction-file {path} does not exist")
        text = path.read_text()
    if text is not None and not text.strip():
        fail("--instruction is empty; leave it out to give none")
    return text.strip() if text is not None else None


def train_config(params: dict, checkpoint_dir: str | None = None):
    """The TrainConfig for a command's options (``ctx.params``): every option named like a TrainConfig field."""
    from dataclasses import fields

    from ..training import TrainConfig, parse_regime

    names = {f.name for f in fields(TrainConfig)}
    values = {k: (v.value if isinstance(v, StrEnum) else v) for k, v in params.items() if k in names}
    values.update(
        regime=parse_regime(params["regime"]), num_threads=params["threads"], checkpoint_dir=checkpoint_dir
    )
    return TrainConfig(**values)


def run_and_track(
    spec,
    arm: str,
    tracking_uri: str | None,
    experiment: str | None,
    log_model: bool,
    traces: bool,
    track: bool,
):
    from .. import tracking
    from ..graphs.runner import AgentRunner
    from ..training import DataUnavailableError

    try:
        observer = ConsoleObserver(spec.train.epochs)
        runner = AgentRunner(spec, observers=[observer])
    except DataUnavailableError as exc:
        fail(str(exc))
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    except Exception as exc:
        from ..agents.local import LocalModelMissingError

        if isinstance(exc, LocalModelMissingError):
            fail(str(exc))
        raise
    model = runner.controller_model
    controller_label = f"{spec.controller} ({model})" if model else spec.controller
    console.print(
        f"data: {runner.trainer.data.source} | train {len(runner.trainer.data.train)} / val {len(runner.trainer.data.val)} / test {len(runner.trainer.data.test)} | controller: {controller_label}"
    )
    try:
        if not track:
            result = runner.run()
            print_usage(result, spec)
            return result, None
        tracking.setup(tracking_uri, experiment or f"mimic-{spec.train.task}")
        with tracking.parent_run(f"run {arm}") as parent:
            tracker = tracking.MlflowTracker(arm=arm, log_model=log_model, traces=traces)
            runner.observers.append(tracker)
            result = runner.run()
            tracking.log_plots({arm: [o.report.to_dict() for o in result.epochs]})  # the parent's overlay
        print_usage(result, spec)
        record_checkpoints(spec, result, tracker.run_id)
        uri = tracking_uri or tracking.DEFAULT_TRACKING_URI
        console.print(
            f"MLflow: parent run {parent.info.run_id}, child run {tracker.run_id} in {uri}. "
            f"See it: [bold]mimic-learn ui --tracking-uri {uri}[/]"
        )
        return result, tracker.run_id
    finally:
        runner.close()


def print_usage(result, spec) -> None:
    """Total provider tokens of the run's decisions and, where a price is known, the estimated cost."""
    from ..tracking import describe_usage, run_usage

    if spec.controller != "none":
        console.print(
            describe_usage(run_usage(result.epochs, spec.controller, spec.provider)), highlight=False
        )


def record_checkpoints(spec, result, run_id: str | None) -> None:
    """Tag the MLflow run with what became of its checkpoint folder once it finished, and say it: ``resume`` and
    ``clean`` read the tag."""
    from ..tracking.runs import tag_checkpoints
    from ..tracking.tags import CHECKPOINTS, CHECKPOINTS_REMOVED

    if result.checkpoints is None:
        return
    if run_id is not None:
        try:
            tag_checkpoints(run_id, result.checkpoints)
        except Exception as exc:  # the run itself is complete and logged: a missing tag must not fail it
            console.print(f"[yellow]could not tag run {run_id} {CHECKPOINTS}={result.checkpoints}: {exc}[/]")
    folder = spec.train.checkpoint_dir
    if result.checkpoints == CHECKPOINTS_REMOVED:
        console.print(
            f"checkpoints: removed {folder} (the run finished, nothing is left to resume; "
            "--keep-checkpoints keeps them)",
            highlight=False,
        )
    else:
        console.print(f"checkpoints: kept in {folder} (`mimic-learn clean` removes them)", highlight=False)
