"""LoopTrainer: the Trainer's control surface over a training loop the user runs themselves.

    steer_target = LoopTrainer(model, optimizer, scheduler=None, monitor="val_mse", mode="min")
    for epoch in range(epochs):
        for x, y in batches:                     # the user's own loop, untouched
            loss = loss_fn(model(x), y); optimizer.zero_grad(); loss.backward(); optimizer.step()
        report = steer_target.end_epoch({"train_loss": ..., "val_mse": ...})
        # --- PAUSE POINT: change knobs (set_lr, set_dropout, ...); they act on the user's optimizer/model

What it does to the user's objects:
    * knobs act on the optimizer's param groups (lr; weight decay in the groups that decay, so a bias group
      kept at 0 stays at 0) and the model's ``nn.Dropout`` modules;
      with an LR scheduler that keeps ``base_lrs`` (LambdaLR, StepLR, ... as Hugging Face and Lightning
      build them) a set lr also rescales ``base_lrs``, so the schedule continues from the new value;
    * two optimizer step hooks (``register_step_pre_hook``/``register_step_post_hook``) measure the mean
      per-parameter gradient norm of the epoch and apply the modulated update
      ``(1 - alpha) * base_step + alpha * delta / N`` per step (N: the previous epoch's step count, or
      ``steps_per_epoch``). The post hook reads the gradient, so loops that compute it inside
      ``optimizer.step(closure)`` (Lightning) are measured correctly;
    * checkpoints hold model, optimizer, scheduler, knobs and history (no data-loader or RNG state: the
      user's loop owns those, unless it draws from a ``TrainerRng`` passed as ``rng=``, which checkpoints then
      carry), so rollbacks restore weights and optimizer state exactly.

Knobs, staged deltas, events, checkpoints and retention are ``BaseTrainer``'s, shared with our ``Trainer``;
the modulated update is ``training.modulated.ModulatedStep``, the same one ``Trainer`` uses.

Metrics are the user's: any names. ``train_loss``/``train_acc``/``val_loss``/``val_acc`` fill the report's
standard fields; every other name goes to ``report.metrics``. ``monitor``/``mode`` name the number decisions
are judged by. Knows nothing of LLMs (``mimic_learn.integrations`` puts a controller on top).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .checkpoints import TrainerRng
from .config import TrainConfig
from .modulated import ModulatedStep
from .reports import STANDARD_METRICS, EpochReport
from .trainer import BaseTrainer


class LoopTrainer(BaseTrainer):
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler=None,
        *,
        monitor: str = "val_loss",
        mode: str = "min",
        steps_per_epoch: int | None = None,
        checkpoint_dir: str | Path | None = None,
        keep_checkpoints: int = 3,
        seed: int = 0,
        rng: TrainerRng | None = None,
    ):
        """``rng``: the loop's own random state, when the loop draws its batch order from ``rng.data`` and runs
        its epochs under ``rng.active()`` (dropout); checkpoints then carry it, so a restored state continues
        exactly and a branch can re-seed it (the outcome bank's data orders). None: the loop owns its RNG."""
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r}: use 'min' (lower {monitor} is better) or 'max'")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer (got {type(optimizer).__name__}); pass the "
                "optimizer your loop steps (for a wrapped one, its inner torch optimizer)"
            )
        config = TrainConfig(
            task="external",
            checkpoint_dir=str(checkpoint_dir) if checkpoint_dir is not None else None,
            keep_checkpoints=keep_checkpoints,
            seed=seed,
        )
        super().__init__(
            model,
            optimizer,
            scheduler,
            config,
            device=next(model.parameters()).device,
            steps_per_epoch=steps_per_epoch or 0,  # 0: learn it from the first epoch
            monitor=monitor,
            mode=mode,
            rng=rng,
        )
        self.data = None  # the user's loop owns its data
        self.num_classes = None
        self._fixed_steps = steps_per_epoch is not None
        self._reset_epoch_counters()
        self._step: ModulatedStep | None = None  # the modulated update of the optimizer step under way
        self._hooks = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]
        self._at_boundary()

    def detach(self) -> None:
        """Remove the optimizer hooks (the optimizer then steps exactly as without this object)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    # ------------------------------------------------------------------ optimizer hooks
    def _reset_epoch_counters(self) -> None:
        self._steps = 0
        self._norm_sum_t: torch.Tensor | None = None
        self._epoch_start = time.perf_counter()

    def _before_step(self, optimizer, args, kwargs) -> None:
        # max_grad_norm. A step given a closure (Lightning) computes its gradients only inside step(): the ones
        # here are the last step's, about to be zeroed, so they are left alone; the Lightning callback clips
        # the fresh ones in on_before_optimizer_step, after the closure and before the update
        closure = args[0] if args else kwargs.get("closure")
        if closure is None:
            self.clip_gradients()
        targets = self._delta_targets()
        self._step = ModulatedStep.begin(targets, self.alpha, self.steps_per_epoch) if targets else None

    @torch.no_grad()
    def _after_step(self, optimizer, args, kwargs) -> None:
        params = list(self._named_params.values())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        norms = torch.stack(torch._foreach_norm(grads))
        self._norm_sum_t = norms if self._norm_sum_t is None else self._norm_sum_t + norms
        self._steps += 1
        if self._step is not None:
            self._step.finish()
            self._step = None

    # ------------------------------------------------------------------ the epoch boundary
    def run_epoch(self) -> EpochReport:
        raise RuntimeError(
            "LoopTrainer does not train: run your own loop and call end_epoch(metrics) at each epoch boundary"
        )

    def end_epoch(
        self,
        metrics: Mapping[str, float],
        per_class_val_acc: list[float] | None = None,
    ) -> EpochReport:
        """Close the epoch the user's loop just ran: build its report from ``metrics`` (any names; see the
        module docstring), pause here. Knob changes made now act from the next optimizer step."""
        values: dict[str, float] = {}
        for name, value in metrics.items():
            try:
                values[str(name)] = float(value.item() if isinstance(value, torch.Tensor) else value)
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"metric {name!r}={value!r} is not a number") from None
        if self.monitor not in values:
            raise ValueError(
                f"the monitored metric {self.monitor!r} is missing from this epoch's metrics "
                f"({', '.join(values) or 'none'}); report it, or build the LoopTrainer with monitor=<one of them>"
            )
        steps = self._steps
        if steps and not self._fixed_steps:
            self.steps_per_epoch = steps
        norms = (self._norm_sum_t / max(steps, 1)).tolist() if self._norm_sum_t is not None else []
        delta_layers = sorted(self._deltas) if self.alpha > 0 else []
        self._deltas = {}  # a delta is for one epoch only
        self.epoch += 1
        report = self._close_epoch(
            norms,
            delta_layers,
            train_loss=values.get("train_loss"),
            train_acc=values.get("train_acc"),
            val_loss=values.get("val_loss"),
            val_acc=values.get("val_acc"),
            per_class_val_acc=[float(v) for v in per_class_val_acc or []],
            wall_time=time.perf_counter() - self._epoch_start,
            steps=steps,
            metrics={k: v for k, v in values.items() if k not in STANDARD_METRICS},
        )
        self._reset_epoch_counters()
        return report

    def test(self):
        return None  # the user's loop owns its test split

    # ------------------------------------------------------------------ knobs
    def set_lr(self, lr: float) -> None:
        old = self.lr
        super().set_lr(lr)
        base_lrs = getattr(self.scheduler, "base_lrs", None)
        if base_lrs is not None and not isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR):
            factor = self.lr / old
            self.scheduler.base_lrs = [b * factor for b in base_lrs]
            for group in self.optimizer.param_groups:
                if "initial_lr" in group:
                    group["initial_lr"] *= factor

    @property
    def weight_decay(self) -> float:
        return max(float(g.get("weight_decay", 0.0)) for g in self.optimizer.param_groups)

    def set_weight_decay(self, wd: float) -> None:
        """Set weight decay in the groups that have it. Frameworks exclude biases and norms with a group at
        weight decay 0 (Hugging Face does): when some groups decay and others are at 0, only the decaying
        ones change; when none decays yet, all groups get ``wd``."""
        wd = self._finite_number("weight_decay", wd, 0.0, 1.0, self.weight_decay)
        groups = self.optimizer.param_groups
        decaying = [g for g in groups if g.get("weight_decay", 0.0) > 0]
        for group in decaying or groups:
            group["weight_decay"] = wd
        self._event(f"weight_decay -> {wd:.3g}")
