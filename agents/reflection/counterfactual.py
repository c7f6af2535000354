from .base import (
    ReflectionContext,
    ReflectionOutcome,
    ReflectionPolicy,
    describe_changes,
    register_policy,
)

KEEP = 5


@register_policy("counterfactual")
class Counterfactual(ReflectionPolicy):
    """Judge a decision by what it caused: the runner trained the same epoch(s) from the pre-decision checkpoint
    without it (same batches, same RNG), and the verdict is the difference in the monitored number and the
    validation loss (``AgentRunner`` with ``RunSpec.counterfactual_horizon``, ``keep_better``; see
    ``graphs/counterfactual.py``); with ``--critic llm`` the critic judges those verdicts. The verdicts, with a short history of earlier ones, go into the next prompt.
    Costs about one extra epoch of training per decision that changes something (horizon 1)."""

    def reflect(self, ctx: ReflectionContext) -> ReflectionOutcome:
        verdicts = ctx.report.get("counterfactual") or []
        memory = list(ctx.memory)
        prev = ctx.previous
        if verdicts:
            critique = ctx.judge(" ".join(v["text"] for v in verdicts))  # the verdicts are the facts
            for v in verdicts:
                memory.append({"epoch": v["decision_epoch"], "verdict": v["text"], "effect": v["effect"]})
        elif not prev:
            critique = "No previous decision to judge."
        elif not prev["changes"]:
            critique = (
                f"Decision after epoch {prev['epoch']} ({describe_changes(prev['changes'])}): nothing was "
                "changed, so there is nothing to credit or blame (no branch was trained)."
            )
        else:
            critique = (
                f"Decision after epoch {prev['epoch']} ({describe_changes(prev['changes'])}): its counterfactual "
                "verdict is not in yet (the shadow branch's horizon has not ended)."
            )
        memory = memory[-KEEP:]
        inject = ""
        if memory:
            inject = "Measured effects of your recent decisions (vs not acting, same batches):\n" + "\n".join(
                f"- {m['verdict']}" for m in memory
            )
        kept = [v for v in verdicts if v.get("kept") == "without"]
        return ReflectionOutcome(critique=critique, inject=inject, memory=memory, reverted=bool(kept))
