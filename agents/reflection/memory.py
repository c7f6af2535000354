from .base import ReflectionContext, ReflectionOutcome, ReflectionPolicy, describe_changes, register_policy

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
                    "val_acc": f"{n['val_acc_before']:.4f}->{n['val_acc_after']:.4f}",
                    "critique": critique,
                }
            )
        memory = memory[-KEEP:]
        lines = [f"- after epoch {m['epoch']}: {m['decision']}; val acc {m['val_acc']}" for m in memory]
        inject = ""
        if memory:
            inject = (
                "Your recent decisions and their outcomes:\n"
                + "\n".join(lines)
                + f"\nLast critique: {critique}"
            )
        return ReflectionOutcome(critique=critique, inject=inject, memory=memory)
