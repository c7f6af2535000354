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
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig, monitor_mode
from .data import TaskData, augment_crop_flip, iterate_batches, load_task
from .knobs import KNOBS, checkpoint_knobs, current_knobs, held_defaults, restore_knobs
from .models import DEFAULT_MODEL, build_model, dropout_modules

DeltaFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class KnobError(ValueError):
    """A knob value the trainer cannot take; the trainer is left unchanged."""


class ShapeMismatchError(KnobError):
    """A weight delta whose shape does not match its parameter."""


STANDARD_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")


@dataclass
class EpochReport:
    """One epoch's numbers. Our Trainer fills every standard field; a user's loop (``LoopTrainer``) may leave
    the losses or accuracies ``None`` and report its own named numbers in ``metrics``. ``monitor``/``mode``
    name the number decisions are judged by (reflection, rules): our Trainer's is ``val_acc``, higher better."""

    epoch: int
    train_loss: float | None
    train_acc: float | None
    val_loss: float | None
    val_acc: float | None
    per_class_val_acc: list[float]
    grad_norms: dict[str, float]
    lr: float
    dropout: float | None
    weight_decay: float
    alpha: float
    wall_time: float
    steps: int
    delta_layers: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # a user's own named numbers (e.g. val_mse)
    knobs: dict[str, float | None] = field(default_factory=dict)  # every table knob's value (training.knobs)
    monitor: str = "val_acc"
    mode: str = "max"  # "max": higher monitor is better; "min": lower is better

    @property
    def finite(self) -> bool:
        watched = (
            getattr(self, self.monitor)
            if self.monitor in STANDARD_METRICS
            else self.metrics.get(self.monitor)
        )
        values = [self.train_loss, self.val_loss, watched]
        return all(math.isfinite(v) for v in values if v is not None)

    def to_dict(self) -> dict:
        return asdict(self)


def metric_value(report: dict, name: str) -> float | None:
    """A named number of an epoch report (``EpochReport.to_dict()`` or a history row): a standard field,
    else one of the report's own ``metrics``; None when the report does not have it."""
    if name in STANDARD_METRICS:
        return report.get(name)
    own = report.get("metrics") or {}
    if name in own:
        return own[name]
    value = report.get(name)  # a history row carries the loop's numbers flat
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass
class EvalResult:
    loss: float
    acc: float
    per_class_acc: list[float]  # the recall of each class: correct / examples of that class
    macro_f1: float | None = None  # the mean over classes of 2PR/(P+R) (0 for a class never predicted right)

    def objective(self, monitor: str) -> dict[str, float]:
        """The monitored number when it is not a standard field: ``{"macro_f1": ...}`` or
        ``{"recall_class_7": ...}``; empty for val_acc / val_loss."""
        if monitor == "macro_f1":
            return {"macro_f1": self.macro_f1}
        if monitor.startswith("recall_class_"):
            k = int(monitor.removeprefix("recall_class_"))
            if not 0 <= k < len(self.per_class_acc):
                raise ValueError(
                    f"monitor={monitor!r}: class {k} is out of range [0, {len(self.per_class_acc) - 1}]"
                )
            return {monitor: self.per_class_acc[k]}
        return {}


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _clone_tree(obj):
    """Deep copy of a state_dict-like tree, tensors detached and cloned."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone_tree(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_clone_tree(v) for v in obj)
    return copy.deepcopy(obj)


class Trainer:
    def __init__(self, model: nn.Module, data: TaskData, config: TrainConfig | None = None):
        self.config = config or TrainConfig()
        cfg = self.config
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.device = _resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        # Dropout draws from torch's global RNG. The trainer keeps its own copy of that state and swaps it in
        # for its epochs (see _own_rng), so code that uses the global RNG between epochs (another trainer,
        # a tool, a benchmark's baseline) cannot change what this run does.
        self._rng_state = torch.get_rng_state()
        self._cuda_rng_state = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        self.model = model.to(self.device)
        on_device = cfg.data_on_device if cfg.data_on_device is not None else self.device.type == "cuda"
        self.data = data.to(self.device) if on_device else data
        self.num_classes = data.num_classes
        # a monitored class out of range fails here, not after the first epoch
        EvalResult(0.0, 0.0, [0.0] * data.num_classes, 0.0).objective(cfg.monitor)
        if cfg.dropout is not None:
            self._set_dropout_now(cfg.dropout)
        self.optimizer = self._build_optimizer()
        self.steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
        self.scheduler = self._build_scheduler()
        self.alpha = cfg.alpha
        self.epoch = 0
        self.history: list[EpochReport] = []
        self.events: list[dict] = []  # knob changes, rollbacks: what happened between epochs
        self._data_gen = torch.Generator().manual_seed(cfg.seed)
        self._deltas: dict[str, torch.Tensor | DeltaFn] = {}
        self._named_params = dict(self.model.named_parameters())
        self.init_params = {k: v.detach().clone() for k, v in self._named_params.items()}
        # Retention (see checkpoint()): pre-decision checkpoints by boundary, and the newest finite one.
        self.pre_decision: dict[int, dict] = {}
        self.pre_decision_keep = 2  # boundaries kept in memory (a runner deciding every k epochs keeps k+1)
        self.last_good: dict | None = None
        self._pending_events: list[str] = []
        self._in_shadow = False  # a counterfactual branch (see shadow_branch) writes no retention checkpoints
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
        )
        torch.manual_seed(config.seed)  # same initial weights for every arm of a seed
        model = build_model(config.model or DEFAULT_MODEL[config.task], data.num_classes, config.dropout)
        return cls(model, data, config)

    # ------------------------------------------------------------------ construction
    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        params = self.model.parameters()
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def _build_scheduler(self):
        cfg = self.config
        if cfg.schedule == "step":
            return torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
        if cfg.schedule == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, factor=cfg.gamma if cfg.gamma < 1 else 0.1, patience=cfg.plateau_patience
            )
        if cfg.schedule == "cosine":  # per epoch, to 0 at the last epoch (chainable: a set_lr rescales it)
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs)
        if cfg.schedule == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=self.steps_per_epoch
            )
        return None

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
        with self._own_rng():  # dropout draws from this trainer's RNG state only
            for x, y in iterate_batches(self.data.train, cfg.batch_size, self._data_gen):
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                if cfg.augment:
                    x = augment_crop_flip(x, self._data_gen)
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
        names = list(self._named_params)
        norms = (norm_sum / max(steps, 1)).tolist()
        report = EpochReport(
            epoch=self.epoch,
            train_loss=(loss_sum / n).item(),
            train_acc=correct.item() / n,
            val_loss=val.loss,
            val_acc=val.acc,
            per_class_val_acc=val.per_class_acc,
            grad_norms=dict(zip(names, norms, strict=True)),
            lr=self.lr,
            dropout=self.dropout,
            weight_decay=self.weight_decay,
            alpha=self.alpha,
            wall_time=time.perf_counter() - start,
            steps=steps,
            delta_layers=delta_layers,
            events=self._pending_events,
            metrics=val.objective(cfg.monitor),
            monitor=cfg.monitor,
            mode=monitor_mode(cfg.monitor),
            knobs=current_knobs(self),
        )
        self._pending_events = []
        self.history.append(report)
        self._at_boundary()
        return report

    @contextmanager
    def _own_rng(self):
        """Run the block on this trainer's RNG state; the global state outside is left as it was."""
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.set_rng_state(self._rng_state)
            if cuda:
                torch.cuda.set_rng_state(self._cuda_rng_state, self.device)
            try:
                yield
            finally:
                self._rng_state = torch.get_rng_state()
                if cuda:
                    self._cuda_rng_state = torch.cuda.get_rng_state(self.device)

    def _clip_gradients(self) -> None:
        if self.knob_values.get("max_grad_norm"):  # gradient clipping (0 or None: off)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.knob_values["max_grad_norm"])

    def _optimizer_step(self) -> None:
        self._clip_gradients()
        if not self._deltas or self.alpha == 0.0:
            self.optimizer.step()
            return
        targets = [(self._named_params[name], d) for name, d in self._deltas.items()]
        with torch.no_grad():
            before = [p.detach().clone() for p, _ in targets]
            grads = [
                p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p, _ in targets
            ]
        self.optimizer.step()
        a, n = self.alpha, self.steps_per_epoch
        with torch.no_grad():
            for (p, d), old, g in zip(targets, before, grads, strict=True):
                base_step = p - old
                delta = d(g, old) if callable(d) else d
                p.copy_(old + (1.0 - a) * base_step + a * delta / n)

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

    @property
    def knob_values(self) -> dict[str, float]:
        """The values of the table knobs that no torch object holds (``training.knobs.held``)."""
        if "_knob_values" not in self.__dict__:  # built on first use: LoopTrainer skips Trainer.__init__
            self._knob_values = held_defaults()
        return self._knob_values

    def set_knob(self, name: str, value: float) -> None:
        """Set a knob kept in ``knob_values`` (within its table bounds), from the next step on."""
        low, high = KNOBS[name].bounds
        self.knob_values[name] = self._finite_number(name, value, low, high, self.knob_values.get(name))
        self._event(f"{name} -> {self.knob_values[name]:.3g}")

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self._named_params.items()}

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

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> dict:
        """Everything needed to continue exactly: model, optimizer, scheduler, RNG states, knobs, history."""
        return {
            "epoch": self.epoch,
            "model": _clone_tree(self.model.state_dict()),
            "optimizer": _clone_tree(self.optimizer.state_dict()),
            "scheduler": _clone_tree(self.scheduler.state_dict()) if self.scheduler is not None else None,
            "rng": self._rng_checkpoint(),
            "knobs": checkpoint_knobs(self),
            "history": [r.to_dict() for r in self.history],
            "events": copy.deepcopy(self.events),
        }

    def restore(self, ckpt: dict) -> None:
        """Full restore: the trainer continues exactly as from the moment ``ckpt`` was taken."""
        self.restore_weights(ckpt, reason=None)
        self.epoch = ckpt["epoch"]
        self._restore_rng(ckpt["rng"])
        self.history = [EpochReport(**r) for r in ckpt["history"]]
        self.events = copy.deepcopy(ckpt.get("events", []))
        self._pending_events = []
        self._deltas = {}

    def _rng_checkpoint(self) -> dict:
        return {
            "torch": self._rng_state.clone(),
            "data": self._data_gen.get_state(),
            "cuda": [self._cuda_rng_state.clone()] if self._cuda_rng_state is not None else [],
        }

    def _restore_rng(self, rng: dict) -> None:
        self._rng_state = rng["torch"].clone()
        self._data_gen.set_state(rng["data"])
        if rng.get("cuda") and self._cuda_rng_state is not None:
            self._cuda_rng_state = rng["cuda"][0].clone()

    def restore_weights(self, ckpt: dict, reason: str | None = "rollback") -> None:
        """Roll back model, optimizer, scheduler and knobs; epoch count, history and RNG go on forward."""
        self.model.load_state_dict(_clone_tree(ckpt["model"]))
        self.optimizer.load_state_dict(_clone_tree(ckpt["optimizer"]))
        if self.scheduler is not None and ckpt["scheduler"] is not None:
            self.scheduler.load_state_dict(_clone_tree(ckpt["scheduler"]))
        restore_knobs(self, ckpt["knobs"])
        self._deltas = {}
        if reason:
            self._event(f"{reason}: restored the state of epoch {ckpt['epoch']}")

    def save_checkpoint(self, path: str | Path, ckpt: dict | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(ckpt or self.checkpoint(), tmp)
        tmp.replace(path)  # atomic: a killed process never leaves a half-written checkpoint
        return path

    @staticmethod
    def load_checkpoint(path: str | Path) -> dict:
        return torch.load(path, map_location="cpu", weights_only=True)

    # ------------------------------------------------------------------ shadow branches
    def snapshot(self) -> dict:
        """Everything ``restore_snapshot`` needs to put the trainer back exactly as it is now, between epochs:
        a full checkpoint plus what a checkpoint leaves out (staged deltas, events not yet reported, the
        retention checkpoints). Used to run a counterfactual branch and come back (``training.fork``)."""
        return {
            "ckpt": self.checkpoint(),
            "deltas": dict(self._deltas),
            "pending_events": list(self._pending_events),
            "pre_decision": dict(self.pre_decision),
            "last_good": self.last_good,
        }

    def restore_snapshot(self, snap: dict) -> None:
        self.restore(snap["ckpt"])
        self._deltas = dict(snap["deltas"])
        self._pending_events = list(snap["pending_events"])
        self.pre_decision = dict(snap["pre_decision"])
        self.last_good = snap["last_good"]

    @contextmanager
    def shadow_branch(self):
        """Train a counterfactual branch inside this block: epoch boundaries keep no retention checkpoints
        (nothing on disk, no pre-decision or last-good entries). The caller restores the real branch after
        (``restore_snapshot``)."""
        was, self._in_shadow = getattr(self, "_in_shadow", False), True
        try:
            yield
        finally:
            self._in_shadow = was

    def _at_boundary(self) -> None:
        """Retention at each epoch boundary, before any decision: pre-decision (last 2 boundaries in memory),
        last good (newest boundary with finite losses), and the last K boundaries on disk."""
        if getattr(self, "_in_shadow", False):
            return
        ckpt = self.checkpoint()
        self.pre_decision[self.epoch] = ckpt
        for old in sorted(self.pre_decision)[: -self.pre_decision_keep]:
            del self.pre_decision[old]
        if not self.history or self.history[-1].finite:
            self.last_good = ckpt
        ckpt_dir = self.config.resolved_checkpoint_dir()
        if ckpt_dir is not None:
            self.save_checkpoint(ckpt_dir / f"epoch_{self.epoch:04d}.pt", ckpt)
            files = sorted(ckpt_dir.glob("epoch_*.pt"))
            for old in files[: max(0, len(files) - self.config.keep_checkpoints)]:
                old.unlink(missing_ok=True)

    def latest_disk_checkpoint(self) -> Path | None:
        ckpt_dir = self.config.resolved_checkpoint_dir()
        files = sorted(ckpt_dir.glob("epoch_*.pt")) if ckpt_dir else []
        return files[-1] if files else None
