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

    def outcome_numbers(self) -> dict:
        before = self.previous["base_report"]
        return {
            "val_acc_before": before["val_acc"],
            "val_acc_after": self.report["val_acc"],
            "val_loss_before": before["val_loss"],
            "val_loss_after": self.report["val_loss"],
        }

    def critique(self) -> str:
        """One-paragraph judgement of the previous decision from before/after validation metrics."""
        if not self.previous:
            return "No previous decision to judge."
        n = self.outcome_numbers()
        changes = describe_changes(self.previous["changes"])
        facts = (
            f"Decision after epoch {self.previous['epoch']} ({changes}); validation accuracy "
            f"{n['val_acc_before']:.4f} -> {n['val_acc_after']:.4f}, validation loss "
            f"{n['val_loss_before']:.4f} -> {n['val_loss_after']:.4f}."
        )
        if self.critic is None:
            delta = n["val_acc_after"] - n["val_acc_before"]
            verdict = "it helped" if delta > 0.001 else "it hurt" if delta < -0.001 else "no clear effect"
            return f"{facts} Verdict: {verdict}."
        reply = self.critic.invoke(
            [
                HumanMessage(
                    f"{facts} In one or two sentences: did this decision help, and what should change next?"
                )
            ]
        )
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
