"""A fixed bank of hand-written training situations: ``mimic-learn eval-controller --bank situations``, "does
the choice point the right way". The benchmark that scores decisions by measured outcomes is
``evals/bank.py`` and ``evals/score.py`` (``--bank outcomes``, the default); this one only checks the direction of
each change against an answer key. The scenarios are data: ``evals/data/scenarios.yaml``.

Each scenario is a paused trainer in a given state (recent history, current knobs, per-class accuracy,
gradient norms) plus the set of decisions a practitioner would accept. A decision is summarised as the set of
knob moves it committed (``("lr", "down")``, ``("dropout", "up")``, ``("rollback", "yes")``, ...). It is
*sensible* when it was made with a valid call (no fallback) and matches an acceptable option: the empty option
means "keep everything"; any other option lists the moves allowed, and the decision must make at least one of
them and nothing outside them.

The controller runs through the same graph as a real run (tools, validation, budget, retries, fallback), on a
real digits trainer whose knobs and history are set to the scenario's.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..tools.controls import TrainerControls
from ..training.config import TrainConfig
from ..training.data import TaskData, load_task
from ..training.models import DigitsNet
from ..training.reports import EpochReport
from ..training.trainer import Trainer

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


SCENARIOS_FILE = Path(__file__).parent / "data" / "scenarios.yaml"
_MOVE_NAMES = {"rollback": ROLLBACK} | {
    f"{knob} {way}": (knob, way)
    for knob in ("lr", "dropout", "weight_decay", "alpha")
    for way in ("up", "down")
}


def _move(name: str) -> Move:
    try:
        return _MOVE_NAMES[name]
    except KeyError:
        raise ValueError(f"{name!r} is not a move; choose from {', '.join(_MOVE_NAMES)}") from None


def load_scenarios(path: Path = SCENARIOS_FILE) -> list[Scenario]:
    """The scenarios of a bank file (format: the comment at the top of ``evals/data/scenarios.yaml``)."""
    data = yaml.safe_load(Path(path).read_text())
    scenarios = []
    for entry in data["scenarios"]:
        entry = dict(entry)
        history = [tuple(float(v) for v in row) for row in entry.pop("history")]
        acceptable = [opt(*(_move(m) for m in option)) for option in entry.pop("acceptable")]
        scenarios.append(Scenario(history=history, acceptable=acceptable, **entry))
    return scenarios


def bank() -> list[Scenario]:
    """The shipped situations bank (``evals/data/scenarios.yaml``), in its order."""
    return load_scenarios()


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
