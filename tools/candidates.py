"""The candidate actions at a decision boundary: one shared definition for the oracle controller
(``--controller oracle``), the outcome bank and controller training.

    controls = TrainerControls(trainer)
    for cand in candidate_actions(controls, tools=["set_lr", "keep_current"]):
        print(cand.name, cand.tool_calls)        # keep [...], lr_x0.1 [{'name': 'set_lr', ...}], ...

A candidate is a list of tool calls, so it reaches the trainer exactly as a controller's decision would (the
same tools, bounds and trust region). The set is derived from the tools bound for the arm: an arm with only
``set_lr`` gets lr candidates only. Candidates, in this order (``keep`` first, so ties go to not acting):

    keep                     keep_current (or no call when keep_current is not bound)
    lr_x0.1, lr_x0.3, lr_x3, lr_x10  set_lr (x10: a stall at lr/100 needs more than x3)
    dropout_+0.1, dropout_-0.1   set_dropout (a model with dropout)
    wd_x10, wd_to_0          set_weight_decay (x10, or 1e-4 from 0; to 0 when it is not 0)
    alpha0.2_grad_delta      set_alpha 0.2 + propose_weight_delta toward_grad_direction 0.05 on the weight
                             with the largest gradient norm last epoch (both tools bound)
    rollback                 rollback, when there is something to undo (the tool refuses otherwise)

A candidate the tools would reject (out of bounds or trust region) or that changes nothing is left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .controls import CommitResult, TrainerControls, same_value
from .errors import ToolArgumentError
from .registry import call_tool, discover

REASON = "oracle candidate"


@dataclass
class Candidate:
    name: str
    tool_calls: list[dict] = field(default_factory=list)  # [{"name": tool, "args": {...}}]

    @property
    def is_keep(self) -> bool:
        return self.name == "keep"


# The lr candidates (x10: a stall at lr/100 needs more than x3); the dry run counts candidates from this table.
LR_FACTORS = ((0.1, "lr_x0.1"), (0.3, "lr_x0.3"), (3.0, "lr_x3"), (10.0, "lr_x10"))


def _proposals(controls: TrainerControls, bound: set[str]) -> list[Candidate]:
    t = controls.trainer
    lr, dropout, wd, alpha = t.lr, t.dropout, t.weight_decay, t.alpha
    out = [Candidate("keep", [_call("keep_current", {})] if "keep_current" in bound else [])]
    if "set_lr" in bound:
        for factor, name in LR_FACTORS:
            out.append(Candidate(name, [_call("set_lr", {"lr": lr * factor})]))
    if "set_dropout" in bound and dropout is not None:
        out.append(Candidate("dropout_+0.1", [_call("set_dropout", {"dropout": round(dropout + 0.1, 4)})]))
        out.append(
            Candidate("dropout_-0.1", [_call("set_dropout", {"dropout": round(max(0.0, dropout - 0.1), 4)})])
        )
    if "set_weight_decay" in bound:
        out.append(
            Candidate("wd_x10", [_call("set_weight_decay", {"weight_decay": wd * 10 if wd > 0 else 1e-4})])
        )
        out.append(Candidate("wd_to_0", [_call("set_weight_decay", {"weight_decay": 0.0})]))
    if {"set_alpha", "propose_weight_delta"} <= bound:
        layer = _delta_layer(t)
        if layer is not None:
            calls = [] if same_value(alpha, 0.2) else [_call("set_alpha", {"alpha": 0.2})]
            calls.append(
                _call(
                    "propose_weight_delta",
                    {"layer": layer, "operation": "toward_grad_direction", "magnitude": 0.05},
                )
            )
            out.append(Candidate("alpha0.2_grad_delta", calls))
    if "rollback" in bound:
        out.append(Candidate("rollback", [_call("rollback", {})]))
    return out


def _call(name: str, args: dict) -> dict:
    return {"name": name, "args": {**args, "reason": REASON}}


def _delta_layer(trainer) -> str | None:
    """The weight matrix with the largest mean gradient norm last epoch (the last weight before any epoch)."""
    weights = [n for n, p in trainer.model.named_parameters() if p.dim() >= 2]
    if not weights:
        return None
    norms = trainer.history[-1].grad_norms if trainer.history else {}
    return max(weights, key=lambda n: norms.get(n, 0.0)) if norms else weights[-1]


def candidate_actions(controls: TrainerControls, tools: list[str] | None = None) -> list[Candidate]:
    """The valid, effective candidates at this boundary for an arm whose bound tools are ``tools`` (None: all
    registered). Checked by staging each on a scratch ``TrainerControls`` (nothing is applied)."""
    registry = discover()
    bound = set(tools) if tools is not None else set(registry)
    out = []
    for cand in _proposals(controls, bound):
        if cand.is_keep:
            out.append(cand)
            continue
        scratch = TrainerControls(controls.trainer, controls.bounds)
        try:
            for call in cand.tool_calls:
                call_tool(call["name"], scratch, call["args"])
        except ToolArgumentError:
            continue  # out of bounds / nothing to roll back: not a candidate here
        changes = list(scratch.pending.values())
        if any(c.key == "rollback" or c.key.startswith("delta:") for c in changes) or any(
            not same_value(scratch.current(c.key), c.value) for c in changes
        ):
            out.append(cand)
    return out


def apply_candidate(controls: TrainerControls, candidate: Candidate) -> CommitResult:
    """Stage the candidate's tool calls and commit them to the paused trainer (a shadow branch's setup)."""
    controls.new_decision()
    for call in candidate.tool_calls:
        call_tool(call["name"], controls, call["args"])
    return controls.commit()
