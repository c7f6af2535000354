import math

from .base import (
    ReflectionContext,
    ReflectionOutcome,
    ReflectionPolicy,
    describe_changes,
    format_number,
    metric_label,
    register_policy,
)


@register_policy("revert_on_harm")
class RevertOnHarm(ReflectionPolicy):
    """If the previous decision made the monitored number worse — validation accuracy (or any number a user
    loop monitors with mode "max") down by more than ``acc_threshold`` absolute, a "min" number (a loss, an
    error) up by more than ``loss_threshold`` relative — or validation loss rise by more than
    ``loss_threshold`` (relative), or the monitored number turn non-finite, restore the trainer's
    pre-decision checkpoint before the new decision is made, and tell the controller why."""

    acc_threshold = 0.01
    loss_threshold = 0.05

    def reflect(self, ctx: ReflectionContext) -> ReflectionOutcome:
        critique = ctx.critique()
        prev = ctx.previous
        if not prev or not prev["changes"]:
            return ReflectionOutcome(critique=critique)
        n = ctx.outcome_numbers()
        harmful = _harmful(n, self.acc_threshold, self.loss_threshold)
        if not harmful:
            return ReflectionOutcome(critique=critique)
        ckpt = ctx.controls.trainer.pre_decision.get(prev["epoch"])
        if ckpt is None:
            return ReflectionOutcome(
                critique=critique
                + f" Harmful, but the pre-decision checkpoint of epoch {prev['epoch']} is gone."
            )
        # The next decision starts from the restored state: that is what a later revert must return to.
        ctx.controls.revert(ckpt, reason="revert_on_harm")
        label = metric_label(n["metric"])
        loss = ""
        if n["metric"] != "val_loss" and n["val_loss_before"] is not None and n["val_loss_after"] is not None:
            loss = f", validation loss {n['val_loss_before']:.4f} -> {n['val_loss_after']:.4f}"
        why = (
            f"Your decision after epoch {prev['epoch']} ({describe_changes(prev['changes'])}) was reverted: "
            f"{label} {format_number(n['before'])} -> {format_number(n['after'])}{loss}. The model, optimizer and settings are "
            f"back to how they were after epoch {prev['epoch']}; choose differently."
        )
        return ReflectionOutcome(critique=critique, inject=why, reverted=True)


def _harmful(n: dict, acc_threshold: float, loss_threshold: float) -> bool:
    after, before = n["after"], n["before"]
    if after is not None and not math.isfinite(after):
        return True
    if n["improvement"] is not None:
        worse = -n["improvement"]
        if n["mode"] == "max" and worse > acc_threshold:
            return True
        if n["mode"] == "min" and worse / max(abs(before), 1e-12) > loss_threshold:
            return True
    lb, la = n["val_loss_before"], n["val_loss_after"]
    if lb is not None and la is not None:
        if la != la or (la - lb) / max(abs(lb), 1e-12) > loss_threshold:
            return True
    return False
