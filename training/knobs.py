"""The knob table: every number the tools may change between epochs is one ``Knob`` entry here.

    from mimic_learn.training.knobs import KNOBS
    for knob in KNOBS.values():
        print(knob.name, knob.get(trainer), knob.bounds)   # lr 0.001 (1e-06, 1.0), dropout 0.2 (0.0, 0.9), ...

Every site that used to list the knobs by hand iterates this table: the tools' ``Bounds`` and trust region
(tools/controls.py), the ``set_<name>`` tools (one factory, tools/builtin/set_knobs.py), the prompt templates,
the epoch report's ``knobs``, the MLflow metrics and the trainer's checkpoints. Adding a knob is one entry
(``register_knob``), plus the line of training code that uses its value. A knob that no torch object holds
(``max_grad_norm``) keeps its value in ``trainer.knob_values``: give it a ``default`` and use ``held(name)``
for its getter, setter and restore.

This module is training-layer: no LangChain, no tools; the entries only name the trainer's methods.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Getter = Callable[[Any], "float | None"]
Setter = Callable[[Any, float], None]


@dataclass(frozen=True)
class Knob:
    """One knob. ``get(trainer)`` reads it (None: this model has none, e.g. no dropout layer); ``set(trainer,
    value)`` is the trainer's checked setter (it logs an event); ``restore(trainer, value)`` puts a checkpoint's
    value back silently (None: the optimizer's state dict already holds it)."""

    name: str
    label: str  # words for prompts and tables ("learning rate")
    bounds: tuple[float, float]  # absolute bounds a tool call must stay within (``Bounds`` may override them)
    get: Getter
    set: Setter
    trust: Literal["factor", "step"] | None = None  # per-decision trust region: x/÷ factor, or ± step
    max_change: float | None = None  # the factor (10: x10 or /10) or the step (0.3: ±0.3)
    scale: Literal["log", "linear"] = "linear"  # how a relative change moves it: multiplied, or added to
    order: int = 50  # apply order within one decision (lower first; rollback before, weight deltas after)
    restore: Setter | None = None
    default: float | None = None  # the starting value of a knob kept in ``trainer.knob_values``
    off: float | None = None  # a value that turns the knob off: always allowed, and not shown in prompts
    unit: str = ""
    argument: str = ""  # what the ``set_<name>`` tool's argument is, for the model
    doc: str = ""  # what setting it does: the ``set_<name>`` tool's docstring (generated when empty)

    def value(self, trainer: Any) -> float | None:
        value = self.get(trainer)
        return None if value is None else float(value)

    def apply(self, trainer: Any, value: float) -> None:
        self.set(trainer, value)

    def is_off(self, value: float | None) -> bool:
        return self.off is not None and (value is None or value == self.off)


def held(name: str) -> tuple[Getter, Setter, Setter]:
    """Getter, setter and restore for a knob kept in ``trainer.knob_values`` (no torch object holds it)."""

    def restore(t: Any, v: float) -> None:
        t.knob_values[name] = float(v)

    return (lambda t: t.knob_values.get(name)), (lambda t, v: t.set_knob(name, v)), restore


def _set_alpha_now(t: Any, v: float) -> None:
    t.alpha = float(v)


KNOBS: dict[str, Knob] = {}
NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
RESERVED = ("rollback", "delta")  # staging keys that are not knobs


def register_knob(knob: Knob) -> Knob:
    """Add ``knob`` to the table (replacing an entry of the same name). Its ``set_<name>`` tool is built by
    ``tools.builtin.set_knobs`` for every entry registered before the tools are discovered, or at once if
    they already were (``tools.registry.register_knob_tool``)."""
    check_name(knob.name)
    low, high = knob.bounds
    if not low < high:
        raise ValueError(f"knob {knob.name!r}: bounds {knob.bounds} must be (low, high) with low < high")
    if (knob.trust is None) != (knob.max_change is None):
        raise ValueError(f"knob {knob.name!r}: give trust and max_change together, or neither")
    KNOBS[knob.name] = knob
    return knob


def check_name(name: str) -> None:
    if not NAME.match(name) or name in RESERVED:
        raise ValueError(
            f"knob name {name!r}: use lower-case letters, digits and _ (up to 41 characters), not one of "
            f"{', '.join(RESERVED)}"
        )


def held_defaults() -> dict[str, float]:
    """The starting values of the knobs kept in ``trainer.knob_values``."""
    return {k.name: k.default for k in KNOBS.values() if k.default is not None}


def current_knobs(trainer: Any) -> dict[str, float | None]:
    """Every table knob's value now (an epoch report's ``knobs``)."""
    return {k.name: k.value(trainer) for k in KNOBS.values()}


def report_knobs(report: Any) -> dict[str, float | None]:
    """The table knobs' values in an epoch report (``EpochReport`` or its dict): a knob the report names as a
    field (lr, dropout, weight_decay, alpha) from that field, any other from its ``knobs`` (None if absent: a
    report made before the knob existed, or by a loop that does not fill ``knobs``)."""
    row = report if isinstance(report, Mapping) else vars(report)
    own = row.get("knobs") or {}
    return {name: row[name] if name in row else own.get(name) for name in KNOBS}


def multiplicative(name: str) -> bool:
    """Whether relative changes of ``name`` multiply it (lr x0.5) rather than add to it (dropout +0.1)."""
    return name in KNOBS and KNOBS[name].scale == "log"


def checkpoint_knobs(trainer: Any) -> dict[str, float | None]:
    """The knob values a checkpoint saves: those the optimizer's state dict does not hold."""
    return {k.name: k.value(trainer) for k in KNOBS.values() if k.restore is not None}


def restore_knobs(trainer: Any, saved: Mapping[str, float | None]) -> None:
    """Put a checkpoint's knob values back, silently (no events); a knob the checkpoint lacks is left as is."""
    for name, value in saved.items():
        knob = KNOBS.get(name)
        if knob is not None and knob.restore is not None and value is not None:
            knob.restore(trainer, value)


def _dropout_now(t: Any, v: float) -> None:
    t._set_dropout_now(v)


_grad_get, _grad_set, _grad_restore = held("max_grad_norm")

for _knob in (
    Knob(
        "lr",
        "learning rate",
        (1e-6, 1.0),
        get=lambda t: t.lr,
        set=lambda t, v: t.set_lr(v),
        trust="factor",
        max_change=10.0,
        scale="log",
        order=20,
        argument="New learning rate (absolute value, e.g. 0.0005).",
        doc="Set the optimizer's learning rate from the next epoch on. With StepLR/ReduceLROnPlateau the "
        "schedule's later factors multiply the new value; with OneCycleLR the rest of the cycle is rescaled "
        "by new/current.",
    ),
    Knob(
        "dropout",
        "dropout",
        (0.0, 0.9),
        get=lambda t: t.dropout,
        set=lambda t, v: t.set_dropout(v),
        trust="step",
        max_change=0.3,
        order=30,
        restore=_dropout_now,
        argument="Dropout probability for every dropout layer of the model.",
        doc="Set the dropout probability of every dropout layer of the model from the next epoch on. Raise it "
        "when validation loss rises while training loss falls (overfitting); lower it when both are high "
        "(underfitting).",
    ),
    Knob(
        "weight_decay",
        "weight decay",
        (0.0, 0.1),
        get=lambda t: t.weight_decay,
        set=lambda t, v: t.set_weight_decay(v),
        trust="factor",
        max_change=10.0,
        scale="log",
        order=10,
        argument="L2 weight decay of the optimizer.",
        doc="Set the optimizer weight decay (L2 regularisation) from the next epoch on. Raise it against "
        "overfitting.",
    ),
    Knob(
        "alpha",
        "alpha",
        (0.0, 1.0),
        get=lambda t: t.alpha,
        set=lambda t, v: t.set_alpha(v),
        trust="step",
        max_change=0.5,
        order=40,
        restore=_set_alpha_now,
        argument="Blend weight of your proposed weight delta in each update: (1-alpha)*optimizer step + "
        "alpha*delta/N. 0 disables deltas.",
        doc="Set alpha, the weight of the proposed weight delta (propose_weight_delta) in every update of the "
        "next epoch: update = (1-alpha)*(optimizer step) + alpha*delta/N. alpha=0 means plain optimizer "
        "steps.",
    ),
    Knob(
        "max_grad_norm",
        "max grad norm",
        (0.0, 100.0),
        get=_grad_get,
        set=_grad_set,
        trust="factor",
        max_change=10.0,
        scale="log",
        order=45,
        restore=_grad_restore,
        default=0.0,
        off=0.0,
        argument="Largest L2 norm of all gradients together; a larger gradient is scaled down to it before "
        "each optimizer step.",
        doc="Set gradient clipping from the next epoch on: before each optimizer step the gradients are "
        "scaled down so that their total L2 norm is at most max_grad_norm. Use it when the loss spikes or "
        "diverges; 0 turns clipping off.",
    ),
):
    register_knob(_knob)
