"""The option types the commands share (typer ``Annotated`` aliases) and the choice enums. Declarative: a
command's signature names an option and its default; its help lives here once."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer


class Task(StrEnum):
    digits = "digits"
    mnist = "mnist"
    mnist32 = "mnist32"
    cifar10 = "cifar10"
    synthetic = "synthetic"


class Critic(StrEnum):
    numbers = "numbers"
    llm = "llm"


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


def _rare_class(value: str | None) -> str | None:
    """Checks ``--rare-class`` when the command line is parsed, so a typo fails before any data is loaded."""
    if value is None:
        return None
    from ..training.config import parse_rare_class

    try:
        parse_rare_class(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc).replace("rare_class=", "")) from None
    return value


RareClassOpt = Annotated[
    str | None,
    typer.Option(
        callback=_rare_class,
        help="Make one class rare in the training subset: <class>:<fraction kept>, e.g. 3:0.05 keeps 5% of "
        "class 3's training images (at least one); validation and test keep every class. Pair it with "
        "--monitor macro_f1 or recall:<class>.",
    ),
]
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


class Experiment(StrEnum):
    paper = "paper"
    blog = "blog"


class BankChoice(StrEnum):
    outcomes = "outcomes"
    situations = "situations"


def int_list(text: str, option: str) -> list[int]:
    """'100,101' or '0-9' (a range, both ends included) as integers, in order, without repeats; a bad entry
    fails with the option's name and what to write instead."""
    from .output import fail

    out: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        lo, dash, hi = part.partition("-")
        try:
            values = list(range(int(lo), int(hi) + 1)) if dash else [int(part)]
        except ValueError:
            fail(f"{option} {text!r}: use comma-separated integers or ranges such as 0-9")
        if dash and not values:
            fail(f"{option} {text!r}: the range {part!r} is empty; write it low-high, such as 0-9")
        out += [v for v in values if v not in out]
    return out
