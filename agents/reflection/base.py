"""Reflection policies: after each epoch, critique the previous decision against its outcome.

A policy is one file in this folder with one class decorated by ``@register_policy("name")``::

    @register_policy("my_policy")
    class MyPolicy(ReflectionPolicy):
        def reflect(self, ctx: ReflectionContext) -> ReflectionOutcome:
            return ReflectionOutcome(critique=ctx.critique(), inject="Be bold.")

``inject`` is added to the next prompt; ``memory`` (if returned) replaces the persisted memory, which the
graph's checkpointer keeps across epochs and process restarts.

Who writes the critique is not the policy's choice but the run's (``AgentConfig.critic``): ``ctx.critique()``
(or ``ctx.judge(facts)`` for a policy with facts of its own) returns the numbers' verdict, or the LLM critic's
judgement of the same facts when ``ctx.critic`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass

from langchain_core.messages import HumanMessage
from langchain_core.runnables import Runnable

from ...tools.controls import TrainerControls
from ...tools.records import PreviousDecision, describe_changes
from ...training.reports import metric_value

POLICIES: dict[str, type[ReflectionPolicy]] = {}


def register_policy(name: str):
    def decorator(cls):
        cls.name = name
        POLICIES[name] = cls
        return cls

    return decorator


@dataclass
class ReflectionContext:
    previous: (
        PreviousDecision | None
    )  # the previous decision: {"epoch", "changes": [...], "base_report": {...}}
    report: dict  # the epoch that just ended
    controls: TrainerControls
    memory: list[dict]
    # the LLM critic (the controller model behind its retries and timeout, answering even when it fails:
    # ``agents.providers.build_controller(..., answer_always=True)``); None: the numbers' verdict
    critic: Runnable | None = None
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
        parts = [f"{metric_label(n['metric'])} {format_number(n['before'])} -> {format_number(n['after'])}"]
        if n["metric"] != "val_loss" and n["val_loss_before"] is not None and n["val_loss_after"] is not None:
            parts.append(
                f"validation loss {format_number(n['val_loss_before'])} -> {format_number(n['val_loss_after'])}"
            )
        facts = f"Decision after epoch {self.previous['epoch']} ({changes}); {', '.join(parts)}."
        return self.judge(facts, f"Verdict: {self.verdict(n)}.")

    def verdict(self, n: dict) -> str:
        """The numbers' verdict on the previous decision (``n``: ``outcome_numbers()``)."""
        delta, tol = n["improvement"], _tolerance(n)
        if not self.previous["changes"]:
            return "nothing was changed, so there is nothing to credit or blame"
        if delta is None or delta != delta:
            return "no comparable number"
        return "it helped" if delta > tol else "it hurt" if delta < -tol else "no clear effect"

    def judge(self, facts: str, verdict: str = "") -> str:
        """``facts`` judged by the run's critic: with the numbers critic, the facts and ``verdict``; with the LLM
        critic, the facts and its reply. When the LLM critic failed (its provider errors end in a reply that says
        so, never in an exception) or replied with no text, ``verdict`` stands in, with the reason."""
        if self.critic is None:
            return f"{facts} {verdict}".strip()
        ask = "In one or two sentences: did this decision help, and what should change next?"
        if self.instruction:
            ask = (
                f"The person running this training gave this instruction: {self.instruction!r}. In one or two "
                "sentences: did this decision respect the instruction, did it help, and what should change next?"
            )
        reply = self.critic.invoke([HumanMessage(f"{facts} {ask}")])
        text = str(reply.text if hasattr(reply, "text") else reply.content).strip()
        failed = reply.response_metadata.get("fallback_reason") or ("" if text else "an empty reply")
        if failed:
            return " ".join(
                part for part in (facts, verdict, f"(the critic did not answer: {failed})") if part
            )
        return f"{facts} {text}"


@dataclass
class ReflectionOutcome:
    critique: str
    inject: str = ""
    reverted: bool = False
    memory: list[dict] | None = None


class ReflectionPolicy:
    name = "base"

    def reflect(self, ctx: ReflectionContext) -> ReflectionOutcome:  # pragma: no cover - interface
        raise NotImplementedError


def metric_label(metric: str) -> str:
    return {
        "val_acc": "validation accuracy",
        "val_loss": "validation loss",
        "train_acc": "train accuracy",
        "train_loss": "train loss",
    }.get(metric, metric)


def format_number(value: float | None) -> str:
    """A metric in a critique: four decimals, or ``n/a``."""
    return "n/a" if value is None else f"{value:.4f}"


def _tolerance(n: dict) -> float:
    """What counts as no clear effect: 0.001 absolute for accuracies (a fraction), 0.1% relative otherwise."""
    if n["metric"].endswith("acc"):
        return 0.001
    return 0.001 * abs(n["before"] or 0.0)
