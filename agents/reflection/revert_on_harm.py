from .base import ReflectionContext, ReflectionOutcome, ReflectionPolicy, describe_changes, register_policy


@register_policy("revert_on_harm")
class RevertOnHarm(ReflectionPolicy):
    """If the previous decision made validation accuracy drop by more than ``acc_threshold`` or validation
    loss rise by more than ``loss_threshold`` (relative), restore the trainer's pre-decision checkpoint
    before the new decision is made, and tell the controller why."""

    acc_threshold = 0.01
    loss_threshold = 0.05

    def reflect(self, ctx: ReflectionContext) -> ReflectionOutcome:
        critique = ctx.critique()
        prev = ctx.previous
        if not prev or not prev["changes"]:
            return ReflectionOutcome(critique=critique)
        n = ctx.outcome_numbers()
        acc_drop = n["val_acc_before"] - n["val_acc_after"]
        loss_rise = (n["val_loss_after"] - n["val_loss_before"]) / max(abs(n["val_loss_before"]), 1e-12)
        harmful = (
            acc_drop > self.acc_threshold
            or loss_rise > self.loss_threshold
            or n["val_loss_after"] != n["val_loss_after"]
        )
        if not harmful:
            return ReflectionOutcome(critique=critique, harmful=False)
        trainer = ctx.controls.trainer
        ckpt = trainer.pre_decision.get(prev["epoch"])
        if ckpt is None:
            return ReflectionOutcome(
                critique=critique
                + f" Harmful, but the pre-decision checkpoint of epoch {prev['epoch']} is gone.",
                harmful=True,
            )
        trainer.restore_weights(ckpt, reason="revert_on_harm")
        # The next decision starts from the restored state: that is what a later revert must return to.
        trainer.pre_decision[trainer.epoch] = trainer.checkpoint()
        why = (
            f"Your decision after epoch {prev['epoch']} ({describe_changes(prev['changes'])}) was reverted: "
            f"validation accuracy {n['val_acc_before']:.4f} -> {n['val_acc_after']:.4f}, loss "
            f"{n['val_loss_before']:.4f} -> {n['val_loss_after']:.4f}. The model, optimizer and settings are back "
            f"to how they were after epoch {prev['epoch']}; choose differently."
        )
        return ReflectionOutcome(critique=critique, inject=why, reverted=True, harmful=True)
