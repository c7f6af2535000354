"""``rules``: a deterministic, LLM-free controller that speaks the same tool protocol as an LLM.

It is a real control arm for experiments and the fallback when a provider fails. One decision per epoch:

1. a non-finite loss           -> rollback, and lr / 10
2. overfitting (val loss up for 2 epochs while train loss goes down, or val-train loss gap > 0.5 and growing)
                               -> dropout + 0.1 (weight decay x 3 when the model has no dropout)
3. underfitting (training accuracy below 0.9, validation loss not above training loss + 0.05, validation loss
   not rising, at least 2 epochs left)  -> lr x 3: the step is too small for the epochs left (tuned on the
   outcome bank's train/dev splits, ``evals/``: at lr 1e-3 a short digits run, a run with dropout 0.8, 60
   training images or lr / 100 all do best with a larger step)
4. plateau (best val loss not improved by 1% over the last ``patience`` epochs) -> lr x 0.5; a loop that
   reports no losses (``LoopTrainer``) is judged on its monitored number instead
5. otherwise                   -> keep_current

It reads numbers only: the user's instruction (``--instruction``) and notes (``mimic-learn note``) are ignored
(an LLM controller sees them in its prompt).
"""

from __future__ import annotations

import math

from langchain_core.messages import AIMessage, ToolMessage

from ..training.reports import metric_value
from .protocol import ProtocolChatModel, tool_call

UNDERFIT_TRAIN_ACC = 0.9  # below this training accuracy, with no gap, the model underfits
UNDERFIT_LR_FACTOR = 3.0
UNDERFIT_MAX_LR = 0.01  # never raise past this (Adam's usual upper range)


def _underfitting(report: dict, history: list[dict]) -> bool:
    last = history[-1]
    train_acc, lr = last.get("train_acc"), report.get("lr")
    left = (report.get("total_epochs") or 0) - (report.get("epoch") or last.get("epoch") or 0)
    if train_acc is None or lr is None or len(history) < 2 or left < 2:
        return False
    rising = last["val_loss"] > history[-2]["val_loss"]
    gap = last["val_loss"] - last["train_loss"]
    return (
        train_acc < UNDERFIT_TRAIN_ACC
        and gap <= 0.05
        and not rising
        and lr * UNDERFIT_LR_FACTOR <= UNDERFIT_MAX_LR
    )


def rules_decision(report: dict, patience: int = 2) -> list[dict]:
    history = report.get("history") or []
    lr, dropout, wd = report.get("lr"), report.get("dropout"), report.get("weight_decay") or 0.0
    if not history or lr is None:
        return [tool_call("keep_current", {"reason": "no metrics yet"})]
    last = history[-1]
    monitor, mode = report.get("monitor", "val_acc"), report.get("mode", "max")
    watched = [last.get("train_loss"), last.get("val_loss"), metric_value(last, monitor)]
    if not all(math.isfinite(v) for v in watched if v is not None):
        return [
            tool_call("rollback", {"reason": "loss is not finite"}),
            tool_call("set_lr", {"lr": lr / 10, "reason": "loss diverged: lower the learning rate tenfold"}),
        ]
    has_losses = all(h.get("train_loss") is not None and h.get("val_loss") is not None for h in history)
    if len(history) >= 3 and has_losses:
        v = [h["val_loss"] for h in history[-3:]]
        t = [h["train_loss"] for h in history[-3:]]
        gaps = [a - b for a, b in zip(v, t, strict=True)]
        rising = v[2] > v[1] > v[0] and t[2] < t[0]
        if rising or (gaps[2] > 0.5 and gaps[2] > gaps[1] > gaps[0]):
            why = "validation loss rises while training loss falls: overfitting"
            if dropout is not None and dropout + 0.1 <= 0.9:
                return [tool_call("set_dropout", {"dropout": round(dropout + 0.1, 4), "reason": why})]
            new_wd = wd * 3 if wd > 0 else 1e-4
            if new_wd <= 0.1:
                return [tool_call("set_weight_decay", {"weight_decay": new_wd, "reason": why})]
    if has_losses and _underfitting(report, history):
        return [
            tool_call(
                "set_lr",
                {
                    "lr": lr * UNDERFIT_LR_FACTOR,
                    "reason": f"training accuracy {last['train_acc']:.2f} with no generalisation gap and the loss "
                    "not rising: underfitting, raise the learning rate",
                },
            )
        ]
    # Plateau: on validation loss when the loop reports one, else on the monitored number (lower is better
    # for mode "min"; a "max" number is negated so that the same test applies).
    name, sign = ("val_loss", 1.0) if has_losses else (monitor, 1.0 if mode == "min" else -1.0)
    series = [metric_value(h, name) for h in history]
    if len(history) > patience and all(v is not None for v in series):
        series = [sign * v for v in series]
        best_before = min(series[:-patience])
        recent = min(series[-patience:])
        if recent > best_before - 0.01 * abs(best_before) and lr / 2 >= 1e-6:
            return [
                tool_call(
                    "set_lr",
                    {
                        "lr": lr / 2,
                        "reason": f"{name} has not improved for {patience} epochs: halve the learning rate",
                    },
                )
            ]
    if name != "val_loss":
        return [tool_call("keep_current", {"reason": f"{name} still improving"})]
    return [tool_call("keep_current", {"reason": "validation loss still improving"})]


class RulesChatModel(ProtocolChatModel):
    """The rules above as a chat model: first turn emits tool calls, the next turn ends the decision."""

    patience: int = 2

    @property
    def _llm_type(self) -> str:
        return "mimic-rules"

    def decide(self, report: dict, turn: int, replies: list[ToolMessage]) -> AIMessage:
        if turn == 0:
            return AIMessage(content="", tool_calls=rules_decision(report, self.patience))
        errors = [r.content for r in replies if r.status == "error"]
        return AIMessage(content="done" if not errors else f"done; rejected: {errors[0]}")
