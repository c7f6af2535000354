"""The dry run of ``reproduce`` (``--dry-run``): what it would run before anything runs — cells, controller
decisions, oracle rollouts, PBT members, estimated time, tokens and cost.

    mimic-learn reproduce paper --dry-run --arms baseline,oracle_end,pbt --controller openai:gpt-4o
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..agents.providers import ProviderOptions
from ..tools.candidates import LR_FACTORS
from .arms import Arm, at_start, chosen_controller, resolve_arms, task_for
from .published import PAPER_EPOCHS
from .tuned import DEFAULT_TUNING_SEEDS, default_tuned_path, is_tuned_arm, read_tuned

# The trials a tuned_static regime is planned with when its tuned file has none yet (tune-static's --trials).
DEFAULT_TUNING_TRIALS = 20

# Tokens per controller decision when nothing better is known: two model turns (the tool call, then the turn
# that ends the decision after the tool's reply) of the ``full`` prompt. Measured here: 2,268 input tokens per
# turn (system prompt, tool schemas, full report; Qwen2.5 tokenizer via llama.cpp's server, digits, 2026-12-02)
# and 82 output tokens. Other tokenizers and prompts differ: this is an order of magnitude, not a quote.
TOKENS_PER_DECISION = (2 * 2_300, 2 * 100)
NO_TOKEN_CONTROLLERS = ("rules", "scripted:", "random", "oracle", "constant:", "none")

# Seconds per training epoch (train + validation on 5,000 images) on THIS machine, for the dry run's time
# estimate. Paper: measured 2026-12-02 with /tmp timing script equivalent to
#   Trainer.from_config(paper_config(regime, 0, data, 2, threads=1)).run_epoch()  (second epoch timed)
# on the shared 2-core x86_64 host, 1 torch thread: 10 -> 1.10 s, 100 -> 1.25, 600 -> 1.26, 6000 -> 2.67;
# full (55,000 train images) is extrapolated from those: 1.1 s fixed + 0.26 ms per training image = 15.4 s.
# Blog proxy (mnist32, 2,000 images, ResNet-18 ImageNet stem, 2 threads): 72 min over 30 cells x 10 epochs in
# docs/results/blog_proxy_mnist32.md = 14.4 s per epoch, controller time included. Anything else: unknown.
# Controller latency (a local model's or a provider's) is not included for the paper rows.
EPOCH_SECONDS = {
    ("paper", "10"): 1.10,
    ("paper", "100"): 1.25,
    ("paper", "600"): 1.26,
    ("paper", "6000"): 2.67,
    ("paper", "full"): 15.4,
    ("blog", "2000"): 14.4,
}

# Arms whose cells are one training run with no controller: their wall time per epoch is what training alone
# costs, so the dry run calibrates its estimate on them (measured_epoch_seconds).
TIMING_ARMS = ("baseline", "reduce_on_plateau", "cosine", "tuned_static", "steplr")
MIN_TIMING_CELLS = 3


@dataclass(frozen=True)
class EpochTiming:
    """Seconds per epoch the dry run assumes for one experiment and regime, and where that number came from."""

    seconds: float
    source: str  # "cells" (median of finished cells in a per-cell file) or "EPOCH_SECONDS"
    cells: int = 0  # how many cells the median is over


def measured_epoch_seconds(cells_csv: Path | None, kind: str) -> dict[str, EpochTiming]:
    """Regime -> the median wall seconds per epoch of the finished no-controller cells (``TIMING_ARMS``, any
    start) of ``kind`` in the per-cell file ``cells_csv``, where it has at least ``MIN_TIMING_CELLS`` of them:
    what a cell really took there, MLflow logging and the machine's other load included. {} without a file."""
    import csv
    import statistics

    if cells_csv is None or not cells_csv.is_file():
        return {}
    per_regime: dict[str, list[float]] = {}
    with cells_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("experiment") != kind or row.get("status") != "finished":
                continue
            if row.get("arm", "").split("@")[0] not in TIMING_ARMS:
                continue
            try:
                wall, epochs = float(row["wall_s"]), int(row["epochs"])
            except (KeyError, TypeError, ValueError):
                continue
            if wall > 0 and epochs > 0:
                per_regime.setdefault(row["regime"], []).append(wall / epochs)
    return {
        regime: EpochTiming(statistics.median(values), "cells", len(values))
        for regime, values in per_regime.items()
        if len(values) >= MIN_TIMING_CELLS
    }


def epoch_timing(kind: str, regime: str, measured: dict[str, EpochTiming]) -> EpochTiming | None:
    """The measured cells' seconds per epoch where there are enough, else the constant (EPOCH_SECONDS)."""
    if regime in measured:
        return measured[regime]
    constant = EPOCH_SECONDS.get((kind, regime))
    return EpochTiming(constant, "EPOCH_SECONDS") if constant is not None else None


def oracle_candidates(tools: tuple[str, ...] | None) -> int:
    """How many candidate actions the oracle rolls out per decision with these tools bound (an upper bound:
    tools.candidates drops a candidate the tools would reject). None: every tool (rollback counted)."""
    bound = set(tools) if tools is not None else {
        "set_lr", "set_dropout", "set_weight_decay", "set_alpha", "propose_weight_delta", "rollback",
    }  # fmt: skip
    count = 1 + len(LR_FACTORS) * ("set_lr" in bound) + 2 * ("set_dropout" in bound)
    count += 2 * ("set_weight_decay" in bound)
    count += {"set_alpha", "propose_weight_delta"} <= bound
    return count + ("rollback" in bound)


def oracle_horizon(controller: str, regime: str) -> int | str | None:
    """The oracle's horizon for a cell of ``regime`` (None: ``controller`` is not an oracle). Plain ``oracle``
    is ``oracle:end`` on a cheap task and ``oracle:5`` otherwise (agents/oracle.py)."""
    if controller != "oracle" and not controller.startswith("oracle:"):
        return None
    from ..agents.oracle import CHEAP_TRAIN_SIZE, DEFAULT_HORIZON_EXPENSIVE, parse_oracle

    horizon = parse_oracle(controller)
    if horizon is None:
        cheap = regime.isdigit() and int(regime) <= CHEAP_TRAIN_SIZE
        horizon = "end" if cheap else DEFAULT_HORIZON_EXPENSIVE
    return horizon


@dataclass
class PlanRow:
    """One arm in one regime, all seeds: what the dry run's table shows."""

    arm: str
    regime: str
    cells: int
    epochs: int  # per cell
    decisions: int  # per cell
    candidates: int  # oracle rollouts per decision (0: not an oracle)
    shadow_epochs: int  # per cell: the oracle's rollouts
    population: int  # PBT members per cell (0: one run)
    epoch_equivalents: int  # all cells: (epochs + shadow) x max(1, population)
    seconds: float | None  # estimated, seconds per epoch (epoch_timing) x epoch_equivalents; None: unknown
    # tuned_static: its Optuna tuning, once per regime (run by tune-static, not by reproduce): trials, trial
    # epochs (trials x tuning seeds x epochs) and whether the tuned file already has it ("done") or "to run"
    trials: int = 0
    tuning_epochs: int = 0
    tuning_status: str = ""
    tuning_seconds: float | None = None  # the tuned file's wall seconds (done), else estimated (to run)


@dataclass
class ReproducePlan:
    cells: int
    decisions: int  # controller decisions over every cell (epoch boundaries before the last, every k-th)
    llm_decisions: int  # those made by a controller that spends provider tokens
    tokens_in: int
    tokens_out: int
    cost_usd: float | None
    price: str | None
    per_arm: dict[str, int]  # decisions per arm
    rows: list[PlanRow] = field(default_factory=list)
    timings: dict[str, EpochTiming] = field(default_factory=dict)  # regime -> seconds per epoch assumed
    cells_csv: Path | None = None  # the per-cell file the measured timings came from


def cell_epochs(kind: str, regime: str, epochs: int | None) -> int:
    """Epochs of one cell, as ``reproduce`` runs it."""
    return epochs or (PAPER_EPOCHS[regime] if kind == "paper" else 20)


def plan_row(
    kind: str,
    arm: Arm,
    chosen: str,
    regime: str,
    n_seeds: int,
    epochs: int | None,
    measured: dict[str, EpochTiming] | None = None,
) -> PlanRow:
    """One arm in one regime: its decisions, the oracle's shadow epochs, PBT members, compute and time."""
    horizon = oracle_horizon(chosen, regime)
    t = cell_epochs(kind, regime, epochs)
    decisions = 0 if arm.controller is None else (t - 1) // arm.every
    boundaries = [e for e in range(1, t) if e % arm.every == 0] if arm.controller else []
    candidates = oracle_candidates(arm.tools) if horizon is not None else 0
    if horizon is None:
        shadow = 0
    elif horizon == "end":
        shadow = candidates * sum(t - e for e in boundaries)
    else:
        shadow = candidates * sum(min(horizon, t - e) for e in boundaries)
    equivalents = (t + shadow) * max(1, arm.population) * n_seeds
    timing = epoch_timing(kind, regime, measured or {})
    return PlanRow(
        arm.name, regime, n_seeds, t, decisions, candidates, shadow, arm.population, equivalents,
        timing.seconds * equivalents if timing is not None else None,
    )  # fmt: skip


def tuning_cost(
    row: PlanRow,
    kind: str,
    tuned_file: Path | None,
    task: str,
    measured: dict[str, EpochTiming] | None = None,
) -> PlanRow:
    """``row`` of a tuned_static arm with its tuning's trials and trial epochs: the tuned file's (done) when it
    has the regime for the row's task and epochs (what ``reproduce`` will accept), else the default tuning
    (DEFAULT_TUNING_TRIALS x 2 seeds, to run)."""
    entry = read_tuned(tuned_file or default_tuned_path(kind)).get("regimes", {}).get(row.regime)
    if entry is not None and (entry.get("task"), entry.get("epochs")) == (task, row.epochs):
        row.trials, row.tuning_epochs, row.tuning_status = entry["n_trials"], entry["trial_epochs"], "done"
        row.tuning_seconds = entry["wall_s"]
    else:
        row.trials, row.tuning_status = DEFAULT_TUNING_TRIALS, "to run"
        row.tuning_epochs = DEFAULT_TUNING_TRIALS * len(DEFAULT_TUNING_SEEDS) * row.epochs
        timing = epoch_timing(kind, row.regime, measured or {})
        row.tuning_seconds = timing.seconds * row.tuning_epochs if timing is not None else None
    return row


def plan_reproduce(
    kind: str,
    regimes: list[str],
    seeds: list[int],
    arm_names: list[str] | None,
    controller: str,
    epochs: int | None,
    provider: ProviderOptions | None = None,
    tokens_per_decision: tuple[int, int] = TOKENS_PER_DECISION,
    starts: list[str] | None = None,
    tuned_file: Path | None = None,
    task: str | None = None,
    cells_csv: Path | None = None,
) -> ReproducePlan:
    """What ``reproduce`` would run, before anything runs: cells, decisions, oracle rollouts, PBT members,
    estimated time, tokens and cost. Counts every cell, including those the store already holds (``reproduce``
    skips those unless --force). ``task``: the --task override (default: the experiment's own task).
    ``cells_csv``: a per-cell file whose finished no-controller cells calibrate the time estimate
    (measured_epoch_seconds); regimes without enough of them use EPOCH_SECONDS."""
    from ..agents.pricing import price_for

    arms = at_start(resolve_arms(kind, arm_names), starts or ["published"])
    if kind == "paper":
        bad = [r for r in regimes if r not in PAPER_EPOCHS and epochs is None]
        if bad:
            raise ValueError(
                f"regimes {bad}: no default epochs; choose from {', '.join(PAPER_EPOCHS)} or pass --epochs"
            )
    # A per-cell file's times are for the experiment's default task and epochs; an override trains other work.
    measured = measured_epoch_seconds(cells_csv, kind) if task is None and epochs is None else {}
    per_arm: dict[str, int] = {}
    rows: list[PlanRow] = []
    llm = 0
    for arm in arms:
        chosen = chosen_controller(arm, controller)
        arm_rows = [plan_row(kind, arm, chosen, regime, len(seeds), epochs, measured) for regime in regimes]
        if is_tuned_arm(arm):
            task_name = task_for(kind, task)
            arm_rows = [tuning_cost(r, kind, tuned_file, task_name, measured) for r in arm_rows]
        rows += arm_rows
        if arm.controller is None:
            continue
        per_arm[arm.name] = sum(r.decisions * r.cells for r in arm_rows)
        if not chosen.startswith(NO_TOKEN_CONTROLLERS):
            llm += per_arm[arm.name]
    tokens_in, tokens_out = llm * tokens_per_decision[0], llm * tokens_per_decision[1]
    provider = provider or ProviderOptions()
    price = price_for(controller, provider.price_in_per_m, provider.price_out_per_m)
    return ReproducePlan(
        cells=len(arms) * len(regimes) * len(seeds),
        decisions=sum(per_arm.values()),
        llm_decisions=llm,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        cost_usd=price.cost_usd(tokens_in, tokens_out) if price else None,
        price=price.describe() if price else None,
        per_arm=per_arm,
        rows=rows,
        timings={r: t for r in regimes if (t := epoch_timing(kind, r, measured)) is not None},
        cells_csv=cells_csv if measured else None,
    )


def describe_plan(plan: ReproducePlan) -> str:
    """The dry run's printout: totals, then one table row per arm and regime, then the time estimate."""
    lines = [
        f"dry run: {plan.cells} cells, {plan.decisions} controller decisions "
        f"({plan.llm_decisions} by a model that spends tokens); nothing was run",
        "decisions per arm: " + (", ".join(f"{k} {v}" for k, v in plan.per_arm.items()) or "none"),
        f"estimated tokens: {plan.tokens_in:,} in / {plan.tokens_out:,} out "
        f"({TOKENS_PER_DECISION[0]:,} / {TOKENS_PER_DECISION[1]:,} per decision, an order of magnitude)",
    ]
    if plan.cost_usd is not None:
        lines.append(f"estimated cost: ${plan.cost_usd:.2f} at {plan.price}")
    else:
        lines.append("estimated cost: no price known for this controller (set --price-in / --price-out)")
    if plan.rows:
        head = ("arm", "regime", "cells", "epochs", "decisions", "candidates", "shadow ep", "population",
                "epoch-equiv", "est. time", "trials")  # fmt: skip
        table = [
            (r.arm, r.regime, str(r.cells), str(r.epochs), str(r.decisions), str(r.candidates or "—"),
             str(r.shadow_epochs or "—"), str(r.population or "—"), f"{r.epoch_equivalents:,}",
             "unknown" if r.seconds is None else f"{r.seconds / 60:.1f} min",
             f"{r.trials} ({r.tuning_status})" if r.trials else "—")
            for r in plan.rows
        ]  # fmt: skip
        widths = [max(len(x) for x in col) for col in zip(head, *table, strict=True)]
        fmt = lambda cols: "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))  # noqa: E731
        lines += [
            "",
            "per cell: epochs, decisions, oracle candidates and shadow epochs; all seeds: epoch-equiv",
            fmt(head),
        ]
        lines += [fmt(row) for row in table]
        known = [r.seconds for r in plan.rows if r.seconds is not None]
        unknown = sorted({r.regime for r in plan.rows if r.seconds is None})
        lines.append(
            f"estimated time: {sum(known) / 3600:.1f} h of training in one process "
            "(divide by parallel trials with --executor ray)"
            + (f"; regimes {', '.join(unknown)}: no measured epoch time" if unknown else "")
            + "; controller latency not included."
        )
        lines += timing_lines(plan)
        lines += tuning_lines(plan.rows)
    return "\n".join(lines)


def timing_lines(plan: ReproducePlan) -> list[str]:
    """Where each regime's seconds per epoch came from: measured cells, or the EPOCH_SECONDS constant."""
    measured = {r: t for r, t in plan.timings.items() if t.source == "cells"}
    constant = {r: t for r, t in plan.timings.items() if t.source != "cells"}
    lines = []
    if measured:
        lines.append(
            f"Seconds per epoch from {plan.cells_csv} (median wall time per epoch of its finished cells of "
            f"{', '.join(TIMING_ARMS)}: what a cell took where those ran, MLflow logging and that machine's "
            "other load included; its 'ran on' column says where): "
            + ", ".join(f"{r} {t.seconds:.2f} s ({t.cells} cells)" for r, t in measured.items())
            + "."
        )
    if constant:
        lines.append(
            "Seconds per epoch from experiments.EPOCH_SECONDS (one epoch timed alone, 1 thread, on the "
            "development machine 2026-12-02; full extrapolated; blog 2000: the committed proxy report; no "
            "MLflow logging, so cells take longer): "
            + ", ".join(f"{r} {t.seconds:g} s" for r, t in constant.items())
            + "."
        )
    return lines


def tuning_lines(rows: list[PlanRow]) -> list[str]:
    """The tuned_static arm's tuning compute (once per regime, shared by its starts), beside the table."""
    tuned = {r.regime: r for r in rows if r.trials}
    if not tuned:
        return []
    parts = [
        f"{regime}: {r.trials} trials, {r.tuning_epochs:,} trial epochs, "
        + ("time unknown" if r.tuning_seconds is None else f"{r.tuning_seconds / 60:.1f} min")
        + f" ({r.tuning_status})"
        for regime, r in tuned.items()
    ]
    return [
        "tuned_static's tuning (Optuna TPE on validation, tuning seeds not in the table; run by "
        "`mimic-learn tune-static`, not by reproduce; its compute belongs to the arm): " + "; ".join(parts)
    ]
