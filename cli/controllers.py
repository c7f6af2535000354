"""Commands about the controller: score it (``eval-controller``, on the outcome bank or the situations bank),
fine-tune the local one (``train-controller``), list what it can call (``tools``), build the outcome bank
(``build-bank``)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .options import BankChoice, RequestTimeoutOpt
from .output import console, fail


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
            help="outcomes: regret on measured outcomes (evals/data/bank_v2.jsonl.gz); situations: the old "
            "hand-written bank, 'does the choice point the right way'."
        ),
    ] = BankChoice.outcomes,
    split: Annotated[
        str, typer.Option(help="Outcome bank split: train, dev or test (test: report once).")
    ] = "dev",
    bank_file: Annotated[
        Path | None,
        typer.Option(help="Outcome bank file (default: the shipped evals/data/bank_v2.jsonl.gz)."),
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
            fail("--bank situations needs at least one --controller")
        _eval_situations(
            controller, budget, model_path, prompt, tool_list, as_json, scenario, request_timeout
        )
        return
    if scenario:
        fail("--scenario names situations of --bank situations; the outcome bank is chosen by --split")
    _eval_outcomes(
        controller or [], split, bank_file, budget, model_path, prompt, tool_list, as_json, request_timeout
    )


def _eval_outcomes(
    controllers, split, bank_file, budget, model_path, prompt, tools, as_json, request_timeout: float
) -> None:
    from ..evals.bank import load_bank
    from ..evals.score import ANCHORS, Evaluator, best_constant, paired_regret_gap

    if split not in ("train", "dev", "test"):
        fail(f"--split {split!r} is not one of train, dev, test")
    try:
        entries = load_bank(bank_file, split)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if not entries:
        fail(f"--split {split} has no situations in {bank_file or 'the shipped bank'}")
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
            fail(str(exc))
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
            f"raw {raw}  median_s {s.median_seconds:.3f}  tokens {s.mean_tokens:.0f}  "
            f"beyond_best {s.beyond_best}  beyond_worst {s.beyond_worst}"
        )
    console.print(
        "beyond_best / beyond_worst: situations where the decision beat every candidate / fell below every "
        "candidate (its regret is clipped to -1 / 2 there; raw is not)"
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

    from ..agents.providers import ProviderOptions, default_prompt, load_chat_model
    from ..evals.scenarios import bank, evaluate_controller

    scenarios = bank()
    if scenario:
        unknown = sorted(set(scenario) - {s.name for s in scenarios})
        if unknown:
            fail(f"--scenario {', '.join(unknown)}: not in the bank ({', '.join(s.name for s in scenarios)})")
        scenarios = [s for s in scenarios if s.name in scenario]
    reports = []
    for spec in controller:
        try:
            model = load_chat_model(spec, ProviderOptions(model_path=model_path, timeout_s=request_timeout))
        except Exception as exc:
            fail(str(exc))
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


def _bank_examples_file(split: str, out: Path) -> Path:
    """Training examples from the shipped outcome bank's ``split`` (train only: dev chooses, test reports)."""
    from ..evals.bank import load_bank
    from ..evals.training_data import bank_examples

    if split != "train":
        raise ValueError(
            f"data=bank:{split}: only bank:train may be trained on (dev chooses between controllers, test is "
            "reported once)"
        )
    entries = load_bank(split=split)
    console.print(f"building examples from {len(entries)} train situations (each is replayed; a few minutes)")
    built = bank_examples(entries)
    for sid, why in built.skipped.items():
        console.print(f"  skipped {sid}: {why}")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "train.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in built.examples))
    console.print(f"wrote {len(built.examples)} examples to {path}")
    return path


def train_controller_command(
    data: Annotated[
        str,
        typer.Argument(
            help="JSONL of training examples (docs/reference/controller-training.md), or bank:train: build them "
            "from the outcome bank's train split (target: the measured best action, keep unless beyond noise; "
            "written to OUT/train.jsonl)."
        ),
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
    from ..agents.controller_data import DatasetFormatError
    from ..agents.train_controller import TrainControllerConfig, train_controller

    cfg = TrainControllerConfig(
        base=base, epochs=epochs, lr=lr, rank=rank, alpha=alpha, seed=seed, max_examples=max_examples,
        threads=threads,
    )  # fmt: skip
    try:
        cfg.check()
        examples = (
            _bank_examples_file(data.removeprefix("bank:"), out) if data.startswith("bank:") else Path(data)
        )
        summary = train_controller(
            examples, out, cfg, command=shlex.join(["mimic-learn", *sys.argv[1:]]), log=console.print
        )
    except (DatasetFormatError, ValueError, ImportError) as exc:
        fail(str(exc))
    console.print(
        f"trained on {summary['examples']} examples in {summary['train_seconds']:.0f} s; use it with "
        f"--controller local:adapter={out}"
    )


def list_tools(
    as_json: Annotated[bool, typer.Option("--json", help="Print the schemas as JSON.")] = False,
) -> None:
    """List the registered tools and their argument schemas."""
    from ..tools import discover

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


def build_bank_cmd(
    out: Annotated[
        Path | None, typer.Option(help="Bank file (default: the shipped evals/data/bank_v2.jsonl.gz).")
    ] = None,
    tasks: Annotated[
        str,
        typer.Option(
            help="Comma-separated tasks of the bank's design: digits, mnist100, mnist600, mnist10, mnist6000, "
            "resnet_proxy (these two: several minutes per situation on one core), diabetes (a regression in a "
            "user's own loop under LoopTrainer)."
        ),
    ] = "digits,mnist100,mnist600,mnist10,mnist6000,resnet_proxy,diabetes",
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
    from ..evals.bank import DEFAULT_BANK, build_bank, default_situations, load_bank

    if executor not in ("local", "ray"):
        fail(f"--executor {executor!r} is not one of local, ray")
    try:
        situations = default_situations([t for t in tasks.split(",") if t])
    except ValueError as exc:
        fail(str(exc))
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
