"""The records that cross layers: what a decision changed, every tool call with its reply, the decision itself.

They are ``TypedDict``s: plain dicts at run time, so LangGraph's checkpointer, the runner's resume file, MLflow
artifacts and the decisions table store and read them as they always did, while type checkers and readers see
one definition. ``graphs`` builds them (the ``apply`` node), ``agents/reflection`` reads the previous decision,
and tracking, experiments and the CLI read the decision; this module sits under all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

import torch


class Change(TypedDict):
    """One committed change: ``key`` is a knob (``lr``) or ``delta:<parameter>``; ``value`` as shown to people."""

    key: str
    value: str
    reason: str
    tool: str


class CallRecord(TypedDict):
    """One tool call of a decision, paired with its reply (``turn`` counts the model's turns from 0)."""

    epoch: int
    turn: int
    tool: str | None
    args: dict | None
    accepted: bool
    reply: str


class Review(TypedDict, total=False):
    """A human reviewer's answer to a proposal (``AgentConfig.approve``); ``note`` is for the next decision."""

    epoch: int
    message_id: str | None
    proposed: list[dict]  # {"index", "tool", "args"} per proposed call
    action: str  # accept | edit | reject
    edits: dict[int, dict]
    reason: str
    note: str


class Decision(TypedDict, total=False):
    """What the ``apply`` node committed at one epoch boundary. The runner adds ``counterfactual`` (the shadow
    branch's verdict) once it is in."""

    epoch: int
    changes: list[Change]
    kept: list[str]  # keep_current reasons and no-op settings
    calls: list[CallRecord]
    commit_error: str | None
    final_text: str  # the model's last text of the decision, cut to 500 characters
    reflection: str
    reverted: bool
    fallbacks: list[str]  # why the primary controller was replaced, one entry per fallback
    reviews: list[Review]
    notes: list[dict]  # the user's notes this decision saw (once)
    counterfactual: dict


# The report fields a decision is judged against later (the reflection's "before")
BASE_REPORT_KEYS = ("epoch", "val_acc", "val_loss", "train_loss", "metrics", "monitor", "mode")


class PreviousDecision(TypedDict):
    """What the graph keeps of the last decision for the next boundary's reflection. ``epoch`` is the boundary
    whose pre-decision checkpoint undoes it; ``base_report`` holds ``BASE_REPORT_KEYS`` of the report it was
    made on (after a revert: of the report the reverted decision was made on)."""

    epoch: int
    changes: list[Change]
    base_report: dict


def show_value(value: object) -> str:
    """A staged value as people read it: floats to 6 significant digits, tensors by shape."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    if isinstance(value, Callable):
        return "gradient-dependent delta"
    return str(value)


def describe_changes(changes: list[Change]) -> str:
    """``lr=0.0005, dropout=0.2``, or ``no change``."""
    if not changes:
        return "no change"
    return ", ".join(f"{c['key']}={c['value']}" for c in changes)
