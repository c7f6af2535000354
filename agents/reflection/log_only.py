from .base import ReflectionContext, ReflectionOutcome, ReflectionPolicy, register_policy


@register_policy("log_only")
class LogOnly(ReflectionPolicy):
    """The paper's: judge the previous decision from before/after validation accuracy; logged, no effect
    (the controller sees no history)."""

    def reflect(self, ctx: ReflectionContext) -> ReflectionOutcome:
        return ReflectionOutcome(critique=ctx.critique())
