"""Reflection policies: after each epoch, critique the previous decision against its outcome.

A policy is one file in this folder with one class decorated by ``@register_policy("name")``::

    @register_policy("my_policy")
    class MyPolicy(ReflectionPolicy):
        def reflect(self, ctx: ReflectionContext) -> ReflectionOutcome:
            return ReflectionOutcome(critique=ctx.critique(), inject="Be bold.")

``inject`` is added to the next prompt; ``memory`` (if returned) replaces the persisted memory, which the
graph's checkpointer keeps across epochs and process restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage

from ...tools.controls import TrainerControls
from ...training.trainer import metric_value

POLICIES: dict[str, type[ReflectionPolicy]] = {}


def register_policy(name: str):
    def decorator(cls):
        cls.name = name
        POLICIES[name] = cls
        return cls

    return decorator


@dataclass
class ReflectionContext:
    previous: dict | None  # the previous decision: {"epoch", "changes": [...], "base_report": {...}}
    report: dict  # the epoch that just ended
    controls: TrainerControls
    memory: list[dict]
    critic: BaseChatModel | None = None  # an LLM to write the critique; None: a deterministic one
    instruction: str | None = None  # the user's instruction for the run (AgentConfig.instruction)

    def outcome_numbers(self) -> dict:
        """The monitored number (``report["monitor"]``: ``val_acc`` for our Trainer, a user loop's own name
        otherwise) and the validation loss, before and after the previous decision. ``improvement`` is
        positive when the monitored number got better (its ``mode`` says which direction is better)."""
        before = self.previous["base_report"]
        metric = self.report.get("monitor", "val_acc")
        mode = self.report.get("mode", "max")
        b, a = metric_value(before, metric), metric_value(self.report, metric)
        improvement = None
        if b is not None and a is not None:
            improvement = (a - b) if mode == "max" else (b - a)
        return {
            "metric": metric,
            "mode": mode,
            "before": b,
            "after": a,
            "improvement": improvement,
            "val_loss_before": before.get("val_loss"),
            "val_loss_after": self.report.get("val_loss"),
        }

    def critique(self) -> str:
        """One-paragraph judgement of the previous decision from before/after validation metrics."""
        if not self.previous:
            return "No previous decision to judge."
        n = self.outcome_numbers()
        changes = describe_changes(self.previous["changes"])
        parts = [f"{metric_label(n['metric'])} {_num(n['before'])} -> {_num(n['after'])}"]
        if n["metric"] != "val_loss" and n["val_loss_before"] is not None and n["val_loss_after"] is not None:
            parts.append(f"validation loss {_num(n['val_loss_before'])} -> {_num(n['val_loss_after'])}")
        facts = f"Decision after epoch {self.previous['epoch']} ({changes}); {', '.join(parts)}."
        if self.critic is None:
            delta, tol = n["improvement"], _tolerance(n)
            if not self.previous["changes"]:
                verdict = "nothing was changed, so there is nothing to credit or blame"
            elif delta is None or delta != delta:
                verdict = "no comparable number"
            else:
                verdict = "it helped" if delta > tol else "it hurt" if delta < -tol else "no clear effect"
            return f"{facts} Verdict: {verdict}."
        ask = "In one or two sentences: did this decision help, and what should change next?"
        if self.instruction:
            ask = (
                f"The person running this training gave this instruction: {self.instruction!r}. In one or two "
                "sentences: did this decision respect the instruction, did it help, and what should change next?"
            )
        reply = self.critic.invoke([HumanMessage(f"{facts} {ask}")])
        return f"{facts} {reply.text if hasattr(reply, 'text') else reply.content}".strip()


@dataclass
class ReflectionOutcome:
    critique: str
    inject: str = ""
    reverted: bool = False
    harmful: bool | None = None
    memory: list[dict] | None = None
    extra: dict = field(default_factory=dict)


class ReflectionPolicy:
    name = "base"

    def reflect(self, ctx: ReflectionContext) -> ReflectionOutcome:  # pragma: no cover - interface
        raise NotImplementedError


def describe_changes(changes: list[dict]) -> str:
    if not changes:
        return "no change"
    return ", ".join(f"{c['key']}={c['value']}" for c in changes)


def metric_label(metric: str) -> str:
    return {
        "val_acc": "validation accuracy",
        "val_loss": "validation loss",
        "train_acc": "train accuracy",
        "train_loss": "train loss",
    }.get(metric, metric)


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _tolerance(n: dict) -> float:
    """What counts as no clear effect: 0.001 absolute for accuracies (a fraction), 0.1% relative otherwise."""
    if n["metric"].endswith("acc"):
        return 0.001
    return 0.001 * abs(n["before"] or 0.0)
