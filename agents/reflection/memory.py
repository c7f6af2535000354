"""``memory``: the critique and a short history of decisions, their reasons and outcomes go into the next prompt.

Everything it adds is run text (decisions, the model's own reasons, critiques): the prompt shows it inside a
quoted ``run-data`` block, never as instructions (prompts/templates.py). With an instruction for the run it
also states the last decision's changes with their direction (``lr 0.001 -> 0.002, raised``) beside a pointer
to the instruction, so the model judges whether that decision respected it; with ``--critic llm`` the critic
is asked that question too.
"""

from .base import (
    ReflectionContext,
    ReflectionOutcome,
    ReflectionPolicy,
    describe_changes,
    format_number,
    metric_label,
    register_policy,
)

KEEP = 5
REASON_CHARS = 200  # of each change's reason, in memory


@register_policy("memory")
class Memory(ReflectionPolicy):
    """The critique and a short history of decisions and outcomes go into the next epoch's prompt."""

    def reflect(self, ctx: ReflectionContext) -> ReflectionOutcome:
        critique = ctx.critique()
        memory = list(ctx.memory)
        if ctx.previous:
            n = ctx.outcome_numbers()
            reasons = "; ".join(
                str(c.get("reason") or "")[:REASON_CHARS] for c in ctx.previous["changes"] if c.get("reason")
            )
            memory.append(
                {
                    "epoch": ctx.previous["epoch"],
                    "decision": describe_changes(ctx.previous["changes"]),
                    "reasons": reasons,
                    "outcome": f"{metric_label(n['metric'])} {format_number(n['before'])}->{format_number(n['after'])}",
                    "critique": critique,
                }
            )
        memory = memory[-KEEP:]
        lines = [
            f"- after epoch {m['epoch']}: {m['decision']}"
            + (f" (reasons given: {m['reasons']})" if m.get("reasons") else "")
            + f"; {_outcome(m)}"
            for m in memory
        ]
        inject = ""
        if memory:
            inject = (
                "Your recent decisions and their outcomes:\n"
                + "\n".join(lines)
                + f"\nLast critique: {critique}"
            )
        if ctx.instruction and ctx.previous:
            inject += (
                f"\nAgainst the instruction above: the last decision (after epoch {ctx.previous['epoch']}) was "
                f"{directions(ctx)}. Whether it respected the instruction is for you to judge before deciding."
            )
        return ReflectionOutcome(critique=critique, inject=inject, memory=memory)


def directions(ctx: ReflectionContext) -> str:
    """The previous decision's changes with their direction where the history has the old value:
    ``lr 0.001 -> 0.002 (raised)``; ``no change`` when it changed nothing."""
    changes = ctx.previous["changes"]
    if not changes:
        return "no change"
    rows = {h.get("epoch"): h for h in ctx.report.get("history") or []}
    before = rows.get(ctx.previous["epoch"], {})
    parts = []
    for c in changes:
        old = before.get(c["key"])
        try:
            new = float(c["value"])
        except (TypeError, ValueError):
            new = None
        if isinstance(old, (int, float)) and new is not None and new != old:
            parts.append(f"{c['key']} {old:.4g} -> {new:.4g} ({'raised' if new > old else 'lowered'})")
        else:
            parts.append(f"{c['key']}={c['value']}")
    return ", ".join(parts)


def _outcome(entry: dict) -> str:
    if "outcome" in entry:
        return entry["outcome"]
    return f"val acc {entry.get('val_acc', 'n/a')}"  # memory persisted by an earlier version
