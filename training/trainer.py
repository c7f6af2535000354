"""A plain PyTorch training loop whose unit of work is one epoch, paused between epochs.

    trainer = Trainer.from_config(TrainConfig(task="digits", epochs=5))
    for _ in range(trainer.config.epochs):
        report = trainer.run_epoch()       # train one epoch, evaluate on validation
        # --- PAUSE POINT: the trainer is idle; look at `report`, change knobs ---
        trainer.set_lr(report.lr * 0.5)    # takes effect from the next epoch
    print(trainer.test())                  # test split: reported, never used for decisions

Knobs changeable between epochs: learning rate, dropout, weight decay, alpha, and a pending weight delta.

Learning rate and schedules
    * StepLR / ReduceLROnPlateau step once per epoch and are chainable: a set lr becomes the current lr
      and the schedule's later factors multiply it (StepLR's next decay multiplies the new value).
    * CosineAnnealingLR (schedule "cosine", to 0 at the last epoch) steps per epoch and is chainable too.
    * OneCycleLR steps per batch: setting lr rescales the remainder of the cycle by new/current
      (the cycle's initial, max and min lr are all multiplied by that factor).

Modulated update (the MIMIC-Learn paper's mechanism, done per step)
    A delta ``d`` for a parameter is the total change wanted over the coming epoch. On each of the
    epoch's N optimizer steps the parameter moves by ``(1 - alpha) * base_step + alpha * d / N`` where
    ``base_step`` is what the base optimizer (with its own state, on the current gradient) would do.
    ``d`` may be a tensor (shape-checked) or a function ``d(grad, param) -> tensor`` evaluated at
    every step. Parameters with no delta, or alpha == 0, take the base optimizer's step unchanged.
    (``training/modulated.py``: the one implementation, shared with a user's loop.)

Checkpoints, the trainer's own RNG and retention live in ``training/checkpoints.py``; ``BaseTrainer`` holds
what this Trainer and a user's loop (``training/loop.py``) share.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints
from .checkpoints import TrainerRng
from .config import TrainConfig, monitor_mode
from .data import TaskData, augment_crop_flip, iterate_batches, load_task
from .knobs import KNOBS, current_knobs, held_defaults
from .models import DEFAULT_MODEL, build_model, dropout_modules
from .modulated import DeltaFn, modulated_step
from .reports import EpochReport, EvalResult


class KnobError(ValueError):
    """A knob value the trainer cannot take; the trainer is left unchanged."""


class ShapeMismatchError(KnobError):
    """A weight delta whose shape does not match its parameter."""


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=cfg.gamma if cfg.gamma < 1 else 0.1, patience=cfg.plateau_patience
        )
    if cfg.schedule == "cosine":  # per epoch, to 0 at the last epoch (chainable: a set_lr rescales it)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch
        )
    return None


class BaseTrainer:
    """What both trainers share: the knobs, staged weight deltas, events between epochs, checkpoints and their
    retention. ``Trainer`` trains epochs itself (``run_epoch``); ``LoopTrainer`` closes epochs a user's loop ran
    (``end_epoch``). Both implement ``training.steerable.Steerable``, the surface tools and the runner use."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        config: TrainConfig,
        *,
        device: torch.device,
        steps_per_epoch: int,
        monitor: str,
        mode: str,
        alpha: float = 0.0,
        rng: TrainerRng | None = None,
    ):
        self.config = config
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.device = device
        self.steps_per_epoch = steps_per_epoch
        self.monitor, self.mode = monitor, mode  # the number decisions are judged by, and its direction
        self.rng = rng  # None: the loop owns its RNG and data order (a user's loop)
        self.alpha = alpha
        self.epoch = 0
        self.history: list[EpochReport] = []
        self.events: list[dict] = []  # knob changes, rollbacks: what happened between epochs
        self._pending_events: list[str] = []  # events of the coming epoch's report
        self._deltas: dict[str, torch.Tensor | DeltaFn] = {}
        self._named_params = dict(model.named_parameters())
        self.init_params = {k: v.detach().clone() for k, v in self._named_params.items()}
        self.retention = checkpoints.Retention(config.resolved_checkpoint_dir(), config.keep_checkpoints)
        self.knob_values: dict[str, float] = held_defaults()  # table knobs no torch object holds

    # retention (see checkpoints.Retention): the runner and tools read and set these
    @property
    def pre_decision(self) -> dict[int, dict]:
        return self.retention.pre_decision

    @pre_decision.setter
    def pre_decision(self, value: dict[int, dict]) -> None:
        self.retention.pre_decision = value

    @property
    def pre_decision_keep(self) -> int:
        return self.retention.keep

    @pre_decision_keep.setter
    def pre_decision_keep(self, value: int) -> None:
        self.retention.keep = value

    @property
    def last_good(self) -> dict | None:
        return self.retention.last_good

    @last_good.setter
    def last_good(self, value: dict | None) -> None:
        self.retention.last_good = value

    def _delta_targets(self) -> list[tuple[torch.Tensor, torch.Tensor | DeltaFn]]:
        """The parameters the modulated update moves this step (none when alpha is 0)."""
        if self.alpha == 0.0:
            return []
        return [(self._named_params[name], d) for name, d in self._deltas.items()]

    # ------------------------------------------------------------------ knobs
    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def weight_decay(self) -> float:
        return float(self.optimizer.param_groups[0].get("weight_decay", 0.0))

    @property
    def dropout(self) -> float | None:
        mods = dropout_modules(self.model)
        return float(mods[0].p) if mods else None

    def set_knob(self, name: str, value: float) -> None:
        """Set a knob kept in ``knob_values`` (within its table bounds), from the next step on."""
        low, high = KNOBS[name].bounds
        self.knob_values[name] = self._finite_number(name, value, low, high, self.knob_values.get(name))
        self._event(f"{name} -> {self.knob_values[name]:.3g}")

    def clip_gradients(self) -> None:
        """Scale the gradients down to the max_grad_norm knob (0 or unset: no clipping)."""
        if self.knob_values.get("max_grad_norm"):  # gradient clipping (0 or None: off)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.knob_values["max_grad_norm"])

    @property
    def pending_delta_layers(self) -> list[str]:
        return sorted(self._deltas)

    def _event(self, text: str) -> None:
        self._pending_events.append(text)
        self.events.append({"after_epoch": self.epoch, "event": text})

    @staticmethod
    def _finite_number(name: str, value, low: float, high: float, current) -> float:
        try:
            if isinstance(value, bool):  # float(True) == 1.0, but True is not a knob value
                raise TypeError(value)
            value = float(value)
        except (TypeError, ValueError):
            raise KnobError(
                f"{name}={value!r} is not a number; allowed range [{low}, {high}]; current {name} is {current}"
            ) from None
        if not math.isfinite(value) or not low <= value <= high:
            raise KnobError(f"{name}={value} is out of range [{low}, {high}]; current {name} is {current}")
        return value

    def set_lr(self, lr: float) -> None:
        lr = self._finite_number("lr", lr, 1e-12, 10.0, self.lr)
        if lr <= 0:
            raise KnobError(f"lr={lr} must be > 0; current lr is {self.lr}")
        factor = lr / self.lr
        for group in self.optimizer.param_groups:
            if isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR):
                for key in ("initial_lr", "max_lr", "min_lr"):
                    if key in group:
                        group[key] *= factor
                group["lr"] *= factor
            else:
                group["lr"] = lr
        if self.scheduler is not None and hasattr(self.scheduler, "_last_lr"):
            self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        self._event(f"lr -> {lr:.3g}")

    def set_dropout(self, p: float) -> None:
        if not dropout_modules(self.model):
            raise KnobError(
                f"dropout={p!r} cannot be set: this model ({type(self.model).__name__}) has no dropout modules, "
                "so there is no range to set it in; current dropout is None"
            )
        p = self._finite_number("dropout", p, 0.0, 0.99, self.dropout)
        self._set_dropout_now(p)
        self._event(f"dropout -> {p:.3g}")

    def _set_dropout_now(self, p: float) -> None:
        for m in dropout_modules(self.model):
            m.p = float(p)

    def set_weight_decay(self, wd: float) -> None:
        wd = self._finite_number("weight_decay", wd, 0.0, 1.0, self.weight_decay)
        for group in self.optimizer.param_groups:
            group["weight_decay"] = wd
        self._event(f"weight_decay -> {wd:.3g}")

    def set_alpha(self, alpha: float) -> None:
        self.alpha = self._finite_number("alpha", alpha, 0.0, 1.0, self.alpha)
        self._event(f"alpha -> {self.alpha:.3g}")

    def set_delta(self, deltas: dict[str, torch.Tensor | DeltaFn | list]) -> None:
        """Stage weight deltas for the next epoch: ``{param_name: tensor | nested list | fn(grad, param)}``.

        All entries are checked first (known name, exact shape, finite values); on any error nothing changes.
        """
        checked: dict[str, torch.Tensor | DeltaFn] = {}
        for name, delta in deltas.items():
            if name not in self._named_params:
                raise KnobError(
                    f"unknown parameter {name!r}; known parameters: {', '.join(self._named_params)}"
                )
            param = self._named_params[name]
            if callable(delta):
                checked[name] = delta
                continue
            try:
                tensor = torch.as_tensor(delta, dtype=param.dtype, device=param.device)
            except (TypeError, ValueError) as exc:
                raise ShapeMismatchError(
                    f"delta for {name!r} is not a rectangular numeric array ({exc}); expected shape {tuple(param.shape)}"
                ) from None
            if tuple(tensor.shape) != tuple(param.shape):
                raise ShapeMismatchError(
                    f"delta for {name!r} has shape {tuple(tensor.shape)}, expected shape {tuple(param.shape)}"
                )
            if not torch.isfinite(tensor).all():
                raise KnobError(f"delta for {name!r} contains NaN or inf values")
            checked[name] = tensor
        self._deltas.update(checked)
        if checked:
            self._event(f"delta staged for {', '.join(sorted(checked))}")

    def clear_delta(self) -> None:
        self._deltas = {}

    # ------------------------------------------------------------------ checkpoints (training/checkpoints.py)
    def checkpoint(self) -> dict:
        """Everything needed to continue exactly: model, optimizer, scheduler, RNG states, knobs, history."""
        return checkpoints.capture(self)

    def restore(self, ckpt: dict) -> None:
        """Full restore: the trainer continues exactly as from the moment ``ckpt`` was taken."""
        checkpoints.restore(self, ckpt)

    def restore_weights(self, ckpt: dict, reason: str | None = "rollback") -> None:
        """Roll back model, optimizer, scheduler and knobs; epoch count, history and RNG go on forward.
        Outside this package, revert through ``TrainerControls.revert`` (it also updates retention)."""
        checkpoints.restore_weights(self, ckpt)
        if reason:
            self._event(f"{reason}: restored the state of epoch {ckpt['epoch']}")

    def mark_boundary(self, good: bool) -> dict:
        """After a revert: the current state becomes this boundary's pre-decision checkpoint (with ``good``,
        also its last good one, on disk too). Returns that checkpoint."""
        fresh = self.checkpoint()
        self.retention.adopt(self.epoch, fresh, good)
        return fresh

    def save_checkpoint(self, path: str | Path, ckpt: dict | None = None) -> Path:
        return checkpoints.save(path, ckpt or self.checkpoint())

    @staticmethod
    def load_checkpoint(path: str | Path) -> dict:
        return checkpoints.load(path)

    def latest_disk_checkpoint(self) -> Path | None:
        return self.retention.latest_file()

    def snapshot(self) -> dict:
        """Everything ``restore_snapshot`` needs to put the trainer back exactly as it is now, between epochs:
        a full checkpoint plus staged deltas, events not yet reported and the retention checkpoints. Used to
        run a counterfactual branch and come back (``training.fork``)."""
        return checkpoints.snapshot(self)

    def restore_snapshot(self, snap: dict) -> None:
        checkpoints.restore_snapshot(self, snap)

    @contextmanager
    def shadow_branch(self):
        """Train a counterfactual branch inside this block: epoch boundaries keep no retention checkpoints
        (nothing on disk, no pre-decision or last-good entries). The caller restores the real branch after
        (``restore_snapshot``)."""
        with self.retention.paused_for_branch():
            yield

    def _close_epoch(self, norms: list[float], delta_layers: list[str], **measured) -> EpochReport:
        """The epoch's report: what the epoch measured (``measured``: EpochReport fields) plus what every trainer
        holds (knobs, pending events, monitor); appended to the history, then the boundary's retention."""
        report = EpochReport(
            epoch=self.epoch,
            grad_norms=dict(zip(self._named_params, norms, strict=True)) if norms else {},
            lr=self.lr,
            dropout=self.dropout,
            weight_decay=self.weight_decay,
            alpha=self.alpha,
            delta_layers=delta_layers,
            events=self._pending_events,
            monitor=self.monitor,
            mode=self.mode,
            knobs=current_knobs(self),
            **measured,
        )
        self._pending_events = []
        self.history.append(report)
        self._at_boundary()
        return report

    def _at_boundary(self) -> None:
        """Retention at each epoch boundary, before any decision (see ``checkpoints.Retention``)."""
        if self.retention.paused:
            return
        finite = not self.history or self.history[-1].finite
        self.retention.record(self.epoch, self.checkpoint(), finite)


class Trainer(BaseTrainer):
    def __init__(self, model: nn.Module, data: TaskData, config: TrainConfig | None = None):
        cfg = config or TrainConfig()
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        device = _resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        rng = TrainerRng(cfg.seed, device)  # this trainer's own RNG state (see TrainerRng)
        model = model.to(device)
        on_device = cfg.data_on_device if cfg.data_on_device is not None else device.type == "cuda"
        self.data = data.to(device) if on_device else data
        self.num_classes = data.num_classes
        # a monitored class out of range fails here, not after the first epoch
        EvalResult(0.0, 0.0, [0.0] * data.num_classes, 0.0).objective(cfg.monitor)
        optimizer = build_optimizer(model, cfg)
        steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
        super().__init__(
            model,
            optimizer,
            build_scheduler(optimizer, cfg, steps_per_epoch),
            cfg,
            device=device,
            steps_per_epoch=steps_per_epoch,
            monitor=cfg.monitor,
            mode=monitor_mode(cfg.monitor),
            alpha=cfg.alpha,
            rng=rng,
        )
        if cfg.dropout is not None:
            self._set_dropout_now(cfg.dropout)
        self._at_boundary()  # boundary 0: before the first epoch

    @classmethod
    def from_config(cls, config: TrainConfig) -> Trainer:
        data = load_task(
            config.task,
            config.regime,
            config.val_size,
            config.seed if config.data_seed is None else config.data_seed,
            config.data_dir,
            config.download,
            config.rare_class,
        )
        torch.manual_seed(config.seed)  # same initial weights for every arm of a seed
        model = build_model(config.model or DEFAULT_MODEL[config.task], data.num_classes, config.dropout)
        return cls(model, data, config)

    # ------------------------------------------------------------------ the loop
    def run_epoch(self) -> EpochReport:
        """Train one epoch on the train split, evaluate on validation, pause. Returns the epoch's report."""
        cfg = self.config
        start = time.perf_counter()
        self.model.train()
        params = list(self._named_params.values())
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        norm_sum = torch.zeros(len(params), device=self.device)
        steps = 0
        delta_layers = sorted(self._deltas) if self.alpha > 0 else []
        onecycle = isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR)
        with self.rng.active():  # dropout draws from this trainer's RNG state only
            for x, y in iterate_batches(self.data.train, cfg.batch_size, self.rng.data):
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                if cfg.augment:
                    x = augment_crop_flip(x, self.rng.data)
                logits = self.model(x)
                loss = F.cross_entropy(logits, y)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
                norm_sum += torch.stack(torch._foreach_norm(grads))
                self._optimizer_step()
                if onecycle and self.scheduler.last_epoch < self.scheduler.total_steps:
                    self.scheduler.step()
                loss_sum += loss.detach() * len(y)
                correct += (logits.detach().argmax(1) == y).sum()
                steps += 1
        n = max(len(self.data.train), 1)
        val = self.evaluate("val")
        self._deltas = {}  # a delta is for one epoch only
        if self.scheduler is not None and not onecycle:
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(val.loss if math.isfinite(val.loss) else float("inf"))
            else:
                self.scheduler.step()
        self.epoch += 1
        return self._close_epoch(
            (norm_sum / max(steps, 1)).tolist(),
            delta_layers,
            train_loss=(loss_sum / n).item(),
            train_acc=correct.item() / n,
            val_loss=val.loss,
            val_acc=val.acc,
            per_class_val_acc=val.per_class_acc,
            wall_time=time.perf_counter() - start,
            steps=steps,
            metrics=val.objective(cfg.monitor),
        )

    def _optimizer_step(self) -> None:
        self.clip_gradients()
        modulated_step(self.optimizer.step, self._delta_targets(), self.alpha, self.steps_per_epoch)

    @torch.no_grad()
    def evaluate(self, split: str = "val") -> EvalResult:
        data = {"train": self.data.train, "val": self.data.val, "test": self.data.test}[split]
        was_training = self.model.training
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        hits = torch.zeros(self.num_classes, device=self.device)
        counts = torch.zeros(self.num_classes, device=self.device)
        predicted = torch.zeros(self.num_classes, device=self.device)
        for x, y in iterate_batches(data, self.config.eval_batch_size):
            x, y = x.to(self.device), y.to(self.device)
            logits = self.model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            pred = logits.argmax(1)
            ok = (pred == y).float()
            hits += torch.bincount(y, weights=ok, minlength=self.num_classes)[: self.num_classes]
            counts += torch.bincount(y, minlength=self.num_classes)[: self.num_classes].float()
            predicted += torch.bincount(pred, minlength=self.num_classes)[: self.num_classes].float()
        self.model.train(was_training)
        n = max(len(data), 1)
        per_class = torch.where(counts > 0, hits / counts.clamp(min=1), torch.zeros_like(hits))
        # F1 of class c = 2 * hits / (examples of c + predictions of c); a class absent from the split and never
        # predicted is left out of the mean
        present = (counts + predicted) > 0
        f1 = 2 * hits[present] / (counts[present] + predicted[present])
        return EvalResult(
            loss=(loss_sum / n).item(),
            acc=hits.sum().item() / n,
            per_class_acc=per_class.tolist(),
            macro_f1=f1.mean().item() if f1.numel() else 0.0,
        )

    def test(self) -> EvalResult:
        """Accuracy on the test split. Reported as *test*; never feed it to a controller."""
        return self.evaluate("test")
