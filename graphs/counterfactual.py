"""Decisions measured by what they caused: counterfactual forks (``--reflection counterfactual``) and the
oracle's rollouts (``--controller oracle[:h]``). ``AgentRunner`` drives both; the arithmetic of a branch is
``training.fork`` and the candidate set is ``tools.candidates``.

Fork: at a boundary whose decision changed something, the runner trains a shadow branch from the pre-decision
checkpoint for ``horizon`` epochs *without* the decision (same batches, same RNG, same dropout masks), then puts
the trainer back exactly as it was, so the real branch trains on as if no shadow had run. When the real branch
reaches the same epoch, ``resolve`` compares the two: the effect (real − shadow in the monitor's direction,
and on validation loss) becomes the verdict the ``counterfactual`` reflection policy reads, the MLflow metric
``decision_effect``, a column of the decisions table, a trace tag/attribute and an ``OutcomeRecord``.
With ``keep_better`` the run continues from the shadow's end state when not acting was better.

Horizon k > 1: the real branch includes the controller's later decisions (each of which forks too); the shadow
takes none. A 1-epoch verdict is labelled short-term: the next epoch's best is often not the run's best.
Cost: ``horizon`` extra epochs per decision that changes something (about 2x training at k = 1); a decision
that changes nothing costs nothing. Open forks are not carried across ``mimic-learn resume``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ..agents.reflection.base import metric_label
from ..tools.candidates import Candidate, apply_candidate, candidate_actions
from ..tools.controls import TrainerControls
from ..tools.records import Decision, describe_changes
from ..training.fork import BranchResult, branch_numbers, effect, run_branch
from ..training.outcomes import BranchOutcome, OutcomeRecord
from ..training.reports import EpochReport, metric_value
from ..training.trainer import Trainer


@dataclass
class OpenFork:
    epoch: int  # the boundary of the decision
    horizon: int
    decision: Decision
    report: dict  # what the controller saw
    rendered: str
    shadow: BranchResult

    @property
    def target(self) -> int:
        return self.epoch + self.horizon


@dataclass
class Counterfactual:
    """The forks of one run. ``train_epoch`` trains one epoch on the runner's trainer and returns its report."""

    controls: TrainerControls  # keep_better switches branches through it, like every revert
    train_epoch: Callable[[], EpochReport]
    horizon: int = 1
    keep_better: bool = False
    total_epochs: int = 0
    open_forks: list[OpenFork] = field(default_factory=list)
    shadow_epochs: int = 0

    def open(
        self, epoch: int, decision: Decision, report: dict, rendered: str, start: dict
    ) -> OpenFork | None:
        """Train the shadow branch of ``decision`` (taken at boundary ``epoch``) from ``start``, the
        pre-decision checkpoint. Nothing happens for a decision that changed nothing or at the last epoch."""
        if not decision.get("changes"):
            return None
        horizon = min(self.horizon, self.total_epochs - epoch)
        if horizon < 1:
            return None
        shadow = run_branch(self.controls.trainer, start, horizon, self.train_epoch)
        self.shadow_epochs += horizon
        fork = OpenFork(epoch, horizon, decision, report, rendered, shadow)
        self.open_forks.append(fork)
        return fork

    def resolve(self, report: EpochReport, config: dict, thread_id: str) -> list[tuple[dict, OutcomeRecord]]:
        """Close the forks whose horizon ends at this (real) epoch: (verdict, record) for each. With
        ``keep_better``, a fork whose shadow was better switches the trainer to the shadow's end state."""
        closing = [f for f in self.open_forks if f.target == report.epoch]
        self.open_forks = [f for f in self.open_forks if f.target != report.epoch]
        out = []
        for fork in closing:
            real, shadow = branch_numbers(report), branch_numbers(fork.shadow.last)
            eff = effect(real["monitor"], shadow["monitor"], report.mode)
            loss_eff = effect(real["val_loss"], shadow["val_loss"], "min")
            kept = "with"
            if self.keep_better and _worse(real["monitor"], shadow["monitor"], report.mode):
                self.controls.revert(
                    fork.shadow.final_state,
                    reason="keep_better (branch without the decision)",
                    good=fork.shadow.last.finite,
                )
                kept = "without"
            verdict = {
                "decision_epoch": fork.epoch,
                "epoch": report.epoch,
                "horizon": fork.horizon,
                "monitor": report.monitor,
                "mode": report.mode,
                "effect": eff,
                "val_loss_effect": loss_eff,
                "real": real,
                "shadow": shadow,
                "kept": kept,
                "changes": fork.decision.get("changes", []),
            }
            verdict["text"] = verdict_text(verdict, fork.report)
            record = OutcomeRecord(
                kind="fork",
                epoch=fork.epoch,
                horizon=fork.horizon,
                monitor=report.monitor,
                mode=report.mode,
                action={
                    "name": "decision",
                    "tool_calls": [
                        {"name": c.get("tool"), "args": c.get("args")}
                        for c in fork.decision.get("calls", [])
                        if c.get("accepted")
                    ],
                    "changes": fork.decision.get("changes", []),
                },
                with_action=_outcome(real, real=kept == "with"),  # the branch the run continues from
                without_action=_outcome(shadow, real=kept == "without"),
                effect=eff,
                val_loss_effect=loss_eff,
                report=fork.report,
                rendered_report=fork.rendered,
                config=config,
                thread_id=thread_id,
                compute_epochs=fork.horizon,
                note=horizon_label(fork.horizon),
            )
            out.append((verdict, record))
        return out


def _outcome(numbers: dict, real: bool) -> BranchOutcome:
    return BranchOutcome(
        epoch=numbers["epoch"],
        monitor=numbers["monitor"],
        val_loss=numbers["val_loss"],
        train_loss=numbers["train_loss"],
        val_acc=numbers["val_acc"],
        metrics=numbers["metrics"],
        real=real,
    )


def _score(value: float | None, mode: str) -> float:
    """A monitor value as 'higher is better'; missing or non-finite is the worst."""
    if value is None or not math.isfinite(value):
        return -math.inf
    return value if mode == "max" else -value


def _worse(real: float | None, shadow: float | None, mode: str) -> bool:
    return _score(real, mode) < _score(shadow, mode)


def horizon_label(horizon: int) -> str:
    return "short-term (1 epoch)" if horizon == 1 else f"{horizon} epochs"


def _change_text(changes: list[dict], report: dict) -> str:
    parts = []
    for c in changes:
        key = c["key"]
        before = report.get(key)
        if isinstance(before, (int, float)) and not isinstance(before, bool):
            parts.append(f"{key} {before:.6g}\u2192{c['value']}")
        else:
            parts.append(f"{key}={c['value']}")
    return ", ".join(parts) or describe_changes(changes)


def format_effect(value: float | None, monitor: str) -> str:
    if value is None:
        return "n/a"
    if value != value:
        return "not finite (a branch diverged)"
    if monitor.endswith("acc"):
        return f"{value * 100:+.2f} pt"
    return f"{value:+.4g}"


def verdict_text(v: dict, report: dict) -> str:
    """e.g. 'set lr 0.001→0.0003: validation accuracy +0.40 pt vs not acting (same batches), validation loss
    -0.0123; short-term (1 epoch) verdict.'"""
    label = metric_label(v["monitor"])
    eff = format_effect(v["effect"], v["monitor"])
    text = f"Decision after epoch {v['decision_epoch']} ({_change_text(v['changes'], report)}): {label} {eff} vs not acting (same batches)"
    if (
        v["monitor"] != "val_loss"
        and v["val_loss_effect"] is not None
        and v["val_loss_effect"] == v["val_loss_effect"]
    ):
        text += f", validation loss {-v['val_loss_effect']:+.4f}"
    text += f"; {horizon_label(v['horizon'])} verdict"
    if v["horizon"] > 1:
        text += " (the real branch includes the later decisions)"
    if v["effect"] is not None and v["effect"] == v["effect"]:
        text += ": it helped" if v["effect"] > 0 else ": it hurt" if v["effect"] < 0 else ": no difference"
    text += "."
    if v["kept"] == "without":
        text += " keep_better: the run continues from the branch without the decision."
    return text


# ---------------------------------------------------------------------------------------------- oracle
@dataclass
class OraclePlan:
    epoch: int
    horizon: int
    candidates: list[Candidate]
    results: list[BranchResult]
    best: int  # index into candidates

    @property
    def compute_epochs(self) -> int:
        return len(self.candidates) * self.horizon


def oracle_horizon(horizon: int | str | None, trainer: Trainer, epoch: int, total: int) -> int:
    """Epochs each candidate is rolled out for at boundary ``epoch`` (never past the run's end)."""
    from ..agents.oracle import CHEAP_TRAIN_SIZE, DEFAULT_HORIZON_EXPENSIVE

    left = total - epoch
    if horizon is None:
        cheap = trainer.data is not None and len(trainer.data.train) <= CHEAP_TRAIN_SIZE
        horizon = "end" if cheap else DEFAULT_HORIZON_EXPENSIVE
    return left if horizon == "end" else min(int(horizon), left)


def plan_oracle(
    controls: TrainerControls,
    tools: list[str] | None,
    horizon: int,
    train_epoch: Callable[[], EpochReport],
) -> OraclePlan:
    """Roll every candidate out in shadow for ``horizon`` epochs from the current (pre-decision) state and pick
    the best by the validation monitor at the horizon's end; ties go to the earlier candidate (keep first)."""
    trainer = controls.trainer
    start = trainer.checkpoint()
    candidates = candidate_actions(controls, tools)
    results = []
    for cand in candidates:

        def setup(t: Trainer, cand=cand) -> None:
            apply_candidate(TrainerControls(t, controls.bounds), cand)

        results.append(run_branch(trainer, start, horizon, train_epoch, setup=setup))
    scores = [_score(metric_value(r.last.to_dict(), r.last.monitor), r.last.mode) for r in results]
    best = max(range(len(candidates)), key=lambda i: (scores[i], -i))
    return OraclePlan(trainer.epoch, horizon, candidates, results, best)


def oracle_records(
    plan: OraclePlan, report: dict, rendered: str, config: dict, thread_id: str
) -> list[OutcomeRecord]:
    """One record per candidate: the candidate's branch against keep's (the first candidate)."""
    keep = branch_numbers(plan.results[0].last)
    out = []
    for i, (cand, res) in enumerate(zip(plan.candidates, plan.results, strict=True)):
        mine = branch_numbers(res.last)
        monitor, mode = res.last.monitor, res.last.mode
        out.append(
            OutcomeRecord(
                kind="oracle_trial",
                epoch=plan.epoch,
                horizon=plan.horizon,
                monitor=monitor,
                mode=mode,
                action={"name": cand.name, "tool_calls": cand.tool_calls, "changes": []},
                with_action=_outcome(mine, real=False),
                without_action=_outcome(keep, real=False),
                effect=effect(mine["monitor"], keep["monitor"], mode),
                val_loss_effect=effect(mine["val_loss"], keep["val_loss"], "min"),
                report=report,
                rendered_report=rendered,
                config=config,
                thread_id=thread_id,
                compute_epochs=plan.horizon,
                chosen=i == plan.best,
                note=horizon_label(plan.horizon),
            )
        )
    return out
