"""What the commands print with: one rich ``console``, ``fail`` (an error line and exit status 2), the per-epoch
lines of a run (``ConsoleObserver``), the cells progress bar of a reproduction or sweep (``CellProgress``)."""

from __future__ import annotations

import shlex
from enum import StrEnum

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console()


def fail(message: str) -> None:
    """Print ``error: <message>`` and exit with status 2."""
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def describe_decision(decision: dict | None) -> str:
    """A decision's tool calls on one line, each marked ok or rejected, with fallback and revert notes."""
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
            self.progress.console.print(f"   decide:  {describe_decision(outcome.decision)}")
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


def command_line(ctx: typer.Context) -> str:
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


def format_size(n: int) -> str:
    """Bytes in B, KiB, MiB or GiB (one decimal above bytes)."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
