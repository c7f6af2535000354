"""A fixed bank of hand-written training situations: ``mimic-learn eval-controller --bank situations``, "does
the choice point the right way". The benchmark that scores decisions by measured outcomes is ``evals/``
(``--bank outcomes``, the default); this one only checks the direction of each change against an answer key.

Each scenario is a paused trainer in a given state (recent history, current knobs, per-class accuracy,
gradient norms) plus the set of decisions a practitioner would accept. A decision is summarised as the set of
knob moves it committed (``("lr", "down")``, ``("dropout", "up")``, ``("rollback", "yes")``, ...). It is
*sensible* when it was made with a valid call (no fallback) and matches an acceptable option: the empty option
means "keep everything"; any other option lists the moves allowed, and the decision must make at least one of them and nothing outside them.

The controller runs through the same graph as a real run (tools, validation, budget, retries, fallback), on a
real digits trainer whose knobs and history are set to the scenario's.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field

from ..tools.controls import TrainerControls
from ..training.config import TrainConfig
from ..training.data import TaskData, load_task
from ..training.models import DigitsNet
from ..training.trainer import EpochReport, Trainer

Move = tuple[str, str]
KEEP: frozenset[Move] = frozenset()
LR_DOWN, LR_UP = ("lr", "down"), ("lr", "up")
DROP_UP, DROP_DOWN = ("dropout", "up"), ("dropout", "down")
WD_UP, WD_DOWN = ("weight_decay", "up"), ("weight_decay", "down")
ALPHA_DOWN = ("alpha", "down")
ROLLBACK = ("rollback", "yes")


def opt(*moves: Move) -> frozenset[Move]:
    return frozenset(moves)


@dataclass
class Scenario:
    name: str
    description: str
    # (train_loss, val_loss, train_acc, val_acc) per epoch, oldest first
    history: list[tuple[float, float, float, float]]
    acceptable: list[frozenset[Move]]
    lr: float = 1e-3
    dropout: float = 0.2
    weight_decay: float = 0.0
    alpha: float = 0.0
    total_epochs: int = 20
    per_class: list[float] | None = None
    grad_scale: list[float] | None = None  # gradient-norm multiplier per epoch (for trends)

    @property
    def keep_acceptable(self) -> bool:
        return KEEP in self.acceptable


def _decline(start: float, rate: float, n: int, floor: float = 0.0) -> list[float]:
    return [max(floor, start * (rate**i)) for i in range(n)]


def _hist(train_loss, val_loss, train_acc, val_acc):
    return list(zip(train_loss, val_loss, train_acc, val_acc, strict=True))


def bank() -> list[Scenario]:
    tl = _decline(1.2, 0.7, 6, 0.05)
    healthy = _hist(
        tl, [x * 1.05 for x in tl], [0.6, 0.75, 0.84, 0.89, 0.92, 0.94], [0.58, 0.73, 0.82, 0.87, 0.9, 0.92]
    )
    plateau = _hist(
        [0.5, 0.35, 0.3, 0.29, 0.285, 0.283],
        [0.52, 0.4, 0.36, 0.361, 0.359, 0.362],
        [0.85, 0.9, 0.91, 0.915, 0.916, 0.917],
        [0.84, 0.88, 0.895, 0.894, 0.896, 0.895],
    )
    overfit = _hist(
        [0.5, 0.3, 0.18, 0.1, 0.05, 0.03],
        [0.52, 0.4, 0.42, 0.48, 0.56, 0.66],
        [0.85, 0.91, 0.95, 0.97, 0.99, 0.995],
        [0.84, 0.88, 0.885, 0.88, 0.875, 0.87],
    )
    return [
        Scenario(
            "diverged_nan",
            "training loss became NaN after the last epoch",
            _hist([0.5, 0.45, float("nan")], [0.52, 0.5, float("nan")], [0.85, 0.86, 0.1], [0.84, 0.85, 0.1]),
            [opt(ROLLBACK, LR_DOWN), opt(LR_DOWN), opt(ROLLBACK)],
            lr=0.5,
        ),
        Scenario(
            "val_nan",
            "validation loss is NaN while training loss is finite but huge",
            _hist([0.5, 0.6, 40.0], [0.52, 0.7, float("nan")], [0.85, 0.8, 0.2], [0.84, 0.8, 0.1]),
            [opt(ROLLBACK, LR_DOWN), opt(LR_DOWN), opt(ROLLBACK)],
            lr=0.3,
        ),
        Scenario(
            "exploding_loss",
            "loss grows fast epoch after epoch",
            _hist([0.6, 0.9, 2.5, 7.0], [0.62, 1.0, 2.8, 8.0], [0.8, 0.7, 0.4, 0.2], [0.8, 0.68, 0.38, 0.2]),
            [opt(LR_DOWN), opt(ROLLBACK, LR_DOWN), opt(ROLLBACK)],
            lr=0.2,
            grad_scale=[1, 3, 10, 40],
        ),
        Scenario(
            "plateau_mid",
            "validation loss flat for 3 epochs, halfway through",
            plateau,
            [opt(LR_DOWN)],
            total_epochs=12,
        ),
        Scenario(
            "plateau_late",
            "validation loss flat for 3 epochs, near the end",
            plateau,
            [opt(LR_DOWN), KEEP],
            total_epochs=7,
        ),
        Scenario(
            "overfitting",
            "training loss falls, validation loss rises (gap widening)",
            overfit,
            [opt(DROP_UP, WD_UP), opt(DROP_UP), opt(WD_UP), opt(ROLLBACK, DROP_UP)],
        ),
        Scenario(
            "overfitting_max_dropout",
            "overfitting with dropout already at its maximum",
            overfit,
            [opt(WD_UP), opt(WD_UP, LR_DOWN), opt(LR_DOWN)],
            dropout=0.9,
        ),
        Scenario(
            "underfitting_tiny_lr",
            "both losses high and falling very slowly; lr is tiny",
            _hist(
                [2.2, 2.15, 2.1, 2.06],
                [2.2, 2.15, 2.11, 2.07],
                [0.2, 0.25, 0.28, 0.3],
                [0.2, 0.24, 0.27, 0.3],
            ),
            [opt(LR_UP), opt(LR_UP, DROP_DOWN)],
            lr=1e-5,
        ),
        Scenario(
            "underfitting_high_dropout",
            "train accuracy low and close to validation; dropout is high",
            _hist(
                [1.2, 1.1, 1.05, 1.02],
                [1.0, 0.95, 0.93, 0.92],
                [0.6, 0.63, 0.64, 0.65],
                [0.68, 0.7, 0.71, 0.71],
            ),
            [opt(DROP_DOWN), opt(DROP_DOWN, LR_UP), opt(LR_UP)],
            dropout=0.6,
        ),
        Scenario(
            "healthy_early", "both losses falling fast, small gap, early in training", healthy[:3], [KEEP]
        ),
        Scenario("healthy_mid", "both losses still falling steadily", healthy, [KEEP]),
        Scenario(
            "tiny_data_noisy",
            "10 training images: train accuracy 1.0, validation accuracy noisy",
            _hist(
                [1.5, 0.6, 0.2, 0.08, 0.04],
                [2.0, 1.8, 1.85, 1.78, 1.82],
                [0.6, 0.9, 1.0, 1.0, 1.0],
                [0.35, 0.42, 0.4, 0.44, 0.41],
            ),
            [KEEP, opt(DROP_UP), opt(WD_UP), opt(DROP_UP, WD_UP), opt(LR_DOWN)],
            total_epochs=30,
        ),
        Scenario(
            "class_stuck",
            "one class stuck near 0.1 accuracy while the others are above 0.9, validation flat",
            plateau,
            [KEEP, opt(LR_DOWN)],
            per_class=[0.97, 0.96, 0.95, 0.12, 0.96, 0.94, 0.97, 0.95, 0.93, 0.94],
        ),
        Scenario(
            "oscillating_val",
            "validation loss swings up and down by large amounts: step too big",
            _hist(
                [0.6, 0.5, 0.55, 0.45, 0.52],
                [0.6, 0.9, 0.5, 1.0, 0.55],
                [0.8, 0.83, 0.82, 0.85, 0.83],
                [0.8, 0.7, 0.83, 0.66, 0.82],
            ),
            [opt(LR_DOWN)],
            lr=0.05,
        ),
        Scenario(
            "exploding_grads",
            "gradient norms grew tenfold while the loss stalls",
            _hist(
                [0.5, 0.48, 0.5, 0.55],
                [0.52, 0.5, 0.53, 0.6],
                [0.85, 0.85, 0.84, 0.82],
                [0.84, 0.84, 0.83, 0.81],
            ),
            [opt(LR_DOWN), opt(ROLLBACK, LR_DOWN)],
            lr=0.05,
            grad_scale=[1, 2, 5, 12],
        ),
        Scenario(
            "vanishing_signal",
            "loss stuck at ln(10) = 2.30 (chance), gradients tiny",
            _hist(
                [2.303, 2.302, 2.302, 2.302],
                [2.303, 2.302, 2.302, 2.302],
                [0.1, 0.1, 0.11, 0.1],
                [0.1, 0.1, 0.1, 0.1],
            ),
            [opt(LR_UP), opt(LR_UP, DROP_DOWN)],
            lr=1e-5,
            grad_scale=[0.01, 0.01, 0.01, 0.01],
        ),
        Scenario(
            "harmful_lr_raise",
            "the last epoch's lr increase made validation loss jump",
            _hist([0.4, 0.35, 0.6], [0.42, 0.38, 0.75], [0.88, 0.9, 0.82], [0.87, 0.89, 0.8]),
            [opt(LR_DOWN), opt(ROLLBACK), opt(ROLLBACK, LR_DOWN)],
            lr=0.02,
        ),
        Scenario(
            "converged",
            "train accuracy 1.0, validation high and stable, last epochs",
            _hist(
                [0.02, 0.015, 0.012, 0.011],
                [0.05, 0.049, 0.05, 0.049],
                [1.0, 1.0, 1.0, 1.0],
                [0.985, 0.986, 0.985, 0.986],
            ),
            [KEEP, opt(LR_DOWN)],
            total_epochs=5,
        ),
        Scenario(
            "alpha_hurting",
            "since alpha was raised (weight deltas blended in) validation loss rose",
            _hist(
                [0.4, 0.36, 0.45, 0.55],
                [0.42, 0.39, 0.5, 0.62],
                [0.88, 0.89, 0.86, 0.83],
                [0.87, 0.88, 0.85, 0.82],
            ),
            [opt(ALPHA_DOWN), opt(ROLLBACK), opt(ROLLBACK, ALPHA_DOWN), opt(ALPHA_DOWN, LR_DOWN)],
            alpha=0.5,
        ),
        Scenario(
            "weight_decay_too_high",
            "both losses high and flat with a large weight decay",
            _hist(
                [1.3, 1.25, 1.24, 1.24],
                [1.3, 1.26, 1.25, 1.25],
                [0.55, 0.57, 0.58, 0.58],
                [0.55, 0.57, 0.57, 0.57],
            ),
            [opt(WD_DOWN), opt(WD_DOWN, LR_UP), opt(WD_DOWN, DROP_DOWN)],
            weight_decay=0.05,
        ),
        Scenario(
            "spike_after_lr_up",
            "a loss spike right after a learning-rate increase, lr now high",
            _hist([0.3, 0.28, 0.9], [0.33, 0.31, 1.1], [0.9, 0.91, 0.7], [0.89, 0.9, 0.68]),
            [opt(LR_DOWN), opt(ROLLBACK, LR_DOWN), opt(ROLLBACK)],
            lr=0.1,
        ),
        Scenario(
            "slow_but_steady_small_lr",
            "loss falling steadily but slowly with a small lr, many epochs left",
            _hist(
                [1.5, 1.4, 1.31, 1.23, 1.16],
                [1.5, 1.41, 1.32, 1.24, 1.17],
                [0.5, 0.53, 0.56, 0.59, 0.61],
                [0.5, 0.53, 0.56, 0.58, 0.61],
            ),
            [opt(LR_UP), KEEP],
            lr=1e-4,
            total_epochs=40,
        ),
    ]


_DATA: TaskData | None = None


def scenario_trainer(s: Scenario) -> Trainer:
    """A real digits trainer whose knobs and history are the scenario's (no training is run)."""
    global _DATA
    if _DATA is None:
        _DATA = load_task("digits")
    trainer = Trainer(
        DigitsNet(),
        _DATA,
        TrainConfig(
            task="digits",
            epochs=s.total_epochs,
            lr=s.lr,
            weight_decay=s.weight_decay,
            dropout=s.dropout,
            alpha=s.alpha,
        ),
    )
    names = [n for n, _ in trainer.model.named_parameters()]
    for i, (t_loss, v_loss, t_acc, v_acc) in enumerate(s.history, 1):
        scale = s.grad_scale[i - 1] if s.grad_scale else 1.0
        per_class = s.per_class if (s.per_class and i == len(s.history)) else [v_acc] * 10
        trainer.history.append(
            EpochReport(
                epoch=i, train_loss=t_loss, train_acc=t_acc, val_loss=v_loss, val_acc=v_acc,
                per_class_val_acc=list(per_class), grad_norms={n: 0.3 * scale for n in names}, lr=s.lr,
                dropout=s.dropout, weight_decay=s.weight_decay, alpha=s.alpha, wall_time=0.1, steps=18,
            )
        )  # fmt: skip
    trainer.epoch = len(s.history)
    trainer.pre_decision = {trainer.epoch: trainer.checkpoint()}
    # The newest finite boundary: this one after a sound epoch (a rollback then has nothing to undo and is
    # refused), the one before after a non-finite epoch (what a rollback returns to).
    last_good = trainer.checkpoint()
    if not trainer.history[-1].finite:
        last_good["epoch"] = trainer.epoch - 1
    trainer.last_good = last_good
    return trainer


def moves(before: dict, after: dict, changes: list[dict]) -> frozenset[Move]:
    out = set()
    for knob in ("lr", "dropout", "weight_decay", "alpha"):
        b, a = before[knob], after[knob]
        if b is None or a is None or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
            continue
        out.add((knob, "up" if a > b else "down"))
    if any(c["key"] == "rollback" for c in changes):
        out.add(ROLLBACK)
    return frozenset(out)


def is_sensible(made: frozenset[Move], acceptable: list[frozenset[Move]]) -> bool:
    for option in acceptable:
        if option == KEEP and not made:
            return True
        if option and made and made <= option:
            return True
    return False


@dataclass
class ScenarioResult:
    scenario: str
    valid: bool
    first_try_valid: bool
    sensible: bool
    moves: list[str]
    tools: list[str]
    seconds: float
    fallbacks: list[str] = field(default_factory=list)


@dataclass
class EvalReport:
    controller: str
    results: list[ScenarioResult]

    @property
    def valid_rate(self) -> float:
        return sum(r.valid for r in self.results) / len(self.results)

    @property
    def first_try_rate(self) -> float:
        return sum(r.first_try_valid for r in self.results) / len(self.results)

    @property
    def sensible_rate(self) -> float:
        return sum(r.sensible for r in self.results) / len(self.results)

    @property
    def median_seconds(self) -> float:
        return statistics.median(r.seconds for r in self.results)

    @property
    def tool_counts(self) -> Counter:
        return Counter(t for r in self.results for t in r.tools)


def evaluate_controller(
    model,
    name: str,
    scenarios: list[Scenario] | None = None,
    budget: int = 8,
    progress=None,
    provider=None,
    prompt: str = "full",
    tools: list[str] | None = None,
) -> EvalReport:
    """Run ``model`` (a chat model) once on every scenario through the real graph; score each decision."""
    from langgraph.checkpoint.memory import InMemorySaver

    from ..agents.providers import ProviderOptions
    from ..graphs.graph import AgentConfig, build_graph
    from ..graphs.runner import agent_report

    results = []
    for s in scenarios or bank():
        trainer = scenario_trainer(s)
        controls = TrainerControls(trainer)
        graph = build_graph(
            controls,
            model,
            AgentConfig(budget=budget, prompt=prompt, tools=tools),
            provider or ProviderOptions(retry_wait=False),
            InMemorySaver(),
        )
        before = {k: controls.current(k) for k in ("lr", "dropout", "weight_decay", "alpha")}
        payload = {
            "epoch": trainer.epoch,
            "report": agent_report(trainer, trainer.history[-1], s.total_epochs),
        }
        state = graph.invoke(
            payload, {"configurable": {"thread_id": s.name}, "recursion_limit": 4 * budget + 20}
        )
        after = {k: controls.current(k) for k in ("lr", "dropout", "weight_decay", "alpha")}
        decision = state["decision"]
        made = moves(before, after, decision["changes"])
        calls = decision["calls"]
        first_turn = [c for c in calls if c.get("turn", 0) == 0]
        accepted = [c for c in calls if c["accepted"]]
        fallbacks = list(state.get("fallbacks") or [])
        valid = bool(accepted) and not fallbacks and decision["commit_error"] is None
        results.append(
            ScenarioResult(
                scenario=s.name,
                valid=valid,
                first_try_valid=bool(first_turn) and all(c["accepted"] for c in first_turn) and not fallbacks,
                sensible=valid and is_sensible(made, s.acceptable),  # no valid call: nothing was chosen
                moves=sorted(f"{k} {d}" for k, d in made),
                tools=[c["tool"] for c in accepted],
                seconds=state.get("decide_seconds", 0.0),
                fallbacks=fallbacks,
            )
        )
        if progress is not None:
            progress(s, results[-1])
    return EvalReport(name, results)
