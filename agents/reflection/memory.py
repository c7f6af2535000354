from .base import (
    ReflectionContext,
    ReflectionOutcome,
    ReflectionPolicy,
    _num,
    describe_changes,
    metric_label,
    register_policy,
)

KEEP = 5


@register_policy("memory")
class Memory(ReflectionPolicy):
    """The critique and a short history of decisions and outcomes go into the next epoch's prompt."""

    def reflect(self, ctx: ReflectionContext) -> ReflectionOutcome:
        critique = ctx.critique()
        memory = list(ctx.memory)
        if ctx.previous:
            n = ctx.outcome_numbers()
            memory.append(
                {
                    "epoch": ctx.previous["epoch"],
                    "decision": describe_changes(ctx.previous["changes"]),
                    "outcome": f"{metric_label(n['metric'])} {_num(n['before'])}->{_num(n['after'])}",
                    "critique": critique,
                }
            )
        memory = memory[-KEEP:]
        lines = [f"- after epoch {m['epoch']}: {m['decision']}; {_outcome(m)}" for m in memory]
        inject = ""
        if memory:
            inject = (
                "Your recent decisions and their outcomes:\n"
                + "\n".join(lines)
                + f"\nLast critique: {critique}"
            )
        return ReflectionOutcome(critique=critique, inject=inject, memory=memory)


def _outcome(entry: dict) -> str:
    if "outcome" in entry:
        return entry["outcome"]
    return f"val acc {entry.get('val_acc', 'n/a')}"  # memory persisted by an earlier version
