"""The tools over a paused trainer: each tool's effect after commit, rejections, trust region, clamping,
replacement within a decision, parallel staging, LangGraph's ToolNode, and atomic commit.

Digits task on CPU; one trained checkpoint per module, restored into a fresh trainer per test.
"""

from __future__ import annotations

import math
import re
import threading

import pytest
import torch
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

from mimic_learn.tools import (
    Bounds,
    ToolArgumentError,
    TrainerControls,
    as_langchain_tools,
    call_tool,
    discover,
)
from mimic_learn.training import TrainConfig, Trainer
from mimic_learn.training.models import dropout_modules

LAYER = "net.4.weight"  # DigitsNet's classifier, shape (10, 64)
OPERATIONS = ("scale", "shrink_toward_init", "noise", "toward_grad_direction")
KNOBS = ("lr", "dropout", "weight_decay", "alpha")


def new_trainer() -> Trainer:
    return Trainer.from_config(TrainConfig(task="digits", epochs=3))


@pytest.fixture(scope="module")
def trained_ckpt() -> dict:
    """The state after one epoch (history, moved weights, Adam state)."""
    discover()
    trainer = new_trainer()
    trainer.run_epoch()
    return trainer.checkpoint()


@pytest.fixture
def trainer(trained_ckpt) -> Trainer:
    trainer = new_trainer()
    trainer.restore(trained_ckpt)
    return trainer


@pytest.fixture
def ctl(trainer) -> TrainerControls:
    return TrainerControls(trainer)


def knobs(trainer: Trainer) -> dict[str, float]:
    return {k: getattr(trainer, k) for k in KNOBS}


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run_tool_node(ctl: TrainerControls, calls: list[dict]) -> dict[str, ToolMessage]:
    """Run tool calls through ToolNode(handle_tool_errors=True) inside a one-node graph; replies by call id."""
    graph = StateGraph(MessagesState)
    graph.add_node("tools", ToolNode(as_langchain_tools(ctl), handle_tool_errors=True))
    graph.add_edge(START, "tools")
    graph.add_edge("tools", END)
    out = graph.compile().invoke({"messages": [AIMessage(content="", tool_calls=calls)]})
    return {m.tool_call_id: m for m in out["messages"] if isinstance(m, ToolMessage)}


def tool_call(name: str, args: dict, call_id: str) -> dict:
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


# ---------------------------------------------------------------------------------------- knob setters
@pytest.mark.parametrize(
    ("tool", "knob", "value"),
    [
        ("set_lr", "lr", 0.005),
        ("set_dropout", "dropout", 0.4),
        ("set_alpha", "alpha", 0.3),
        ("set_weight_decay", "weight_decay", 0.01),
    ],
)
def test_knob_tool_applies_only_after_commit(trainer, ctl, tool, knob, value):
    before, before_weights = knobs(trainer), weights(trainer)
    reply = call_tool(tool, ctl, {knob: value, "reason": "test"})
    assert f"{knob} {before[knob]:.6g} -> {value:.6g} staged" in reply
    assert knobs(trainer) == before and same_weights(weights(trainer), before_weights)
    assert ctl.pending[knob].value == value

    result = ctl.commit()
    assert result.changed_knobs == [knob]
    assert getattr(trainer, knob) == value
    assert {k: v for k, v in knobs(trainer).items() if k != knob} == {
        k: v for k, v in before.items() if k != knob
    }
    assert ctl.pending == {}


def test_set_lr_and_weight_decay_change_every_param_group(trainer, ctl):
    call_tool("set_lr", ctl, {"lr": 0.002, "reason": "test"})
    call_tool("set_weight_decay", ctl, {"weight_decay": 0.05, "reason": "test"})
    ctl.commit()
    assert all(g["lr"] == 0.002 and g["weight_decay"] == 0.05 for g in trainer.optimizer.param_groups)


def test_set_dropout_changes_every_dropout_module(trainer, ctl):
    modules = dropout_modules(trainer.model)
    assert modules and all(m.p == 0.2 for m in modules)
    call_tool("set_dropout", ctl, {"dropout": 0.45, "reason": "overfitting"})
    assert all(m.p == 0.2 for m in modules)
    ctl.commit()
    assert all(m.p == 0.45 for m in modules)


# ---------------------------------------------------------------------------------------- weight deltas
@pytest.fixture(scope="module")
def baseline_layer(trained_ckpt) -> torch.Tensor:
    """LAYER after one more epoch with alpha = 0.5 and no delta."""
    trainer = new_trainer()
    trainer.restore(trained_ckpt)
    ctl = TrainerControls(trainer)
    call_tool("set_alpha", ctl, {"alpha": 0.5, "reason": "test"})
    ctl.commit()
    trainer.run_epoch()
    return dict(trainer.model.named_parameters())[LAYER].detach().clone()


@pytest.mark.parametrize("operation", OPERATIONS)
def test_propose_weight_delta_moves_the_layer_differently(trainer, ctl, baseline_layer, operation):
    magnitude = 0.1
    param = dict(trainer.model.named_parameters())[LAYER]
    before = param.detach().clone()
    weight_norm = before.norm().item()
    reply = call_tool(
        "propose_weight_delta",
        ctl,
        {"layer": LAYER, "operation": operation, "magnitude": magnitude, "reason": "test"},
    )
    assert f"{operation} delta for {LAYER} (10, 64) staged" in reply
    assert "alpha is 0" in reply  # alpha not set yet: the reply warns that the delta would do nothing
    delta = ctl.pending[f"delta:{LAYER}"].value
    if callable(delta):
        delta = delta(torch.randn_like(before), before)
    assert delta.shape == before.shape
    assert delta.norm().item() <= magnitude * weight_norm * (1 + 1e-5)
    assert delta.norm().item() > 0
    assert trainer.pending_delta_layers == []  # nothing reaches the trainer before commit
    assert torch.equal(param.detach(), before)

    call_tool("set_alpha", ctl, {"alpha": 0.5, "reason": "test"})
    ctl.commit()
    assert trainer.pending_delta_layers == [LAYER]
    report = trainer.run_epoch()
    assert report.delta_layers == [LAYER]
    assert not torch.allclose(param.detach(), baseline_layer)


def test_propose_weight_delta_scale_may_be_negative_others_not(ctl):
    args = {"layer": LAYER, "magnitude": -0.05, "reason": "test"}
    assert "scale delta" in call_tool("propose_weight_delta", ctl, {**args, "operation": "scale"})
    with pytest.raises(ToolArgumentError, match=r"magnitude=-0.05 is out of range \[0, 0.1\]") as exc:
        call_tool("propose_weight_delta", ctl, {**args, "operation": "noise"})
    assert exc.value.argument == "magnitude"


def test_propose_weight_delta_unknown_layer_lists_the_parameters(ctl):
    with pytest.raises(ToolArgumentError) as exc:
        call_tool(
            "propose_weight_delta",
            ctl,
            {"layer": "fc.9.weight", "operation": "noise", "magnitude": 0.05, "reason": "test"},
        )
    assert exc.value.argument == "layer"
    assert "layer='fc.9.weight'" in str(exc.value) and "net.1.weight" in str(exc.value)
    assert ctl.pending == {}


def test_a_knob_set_to_its_current_value_is_kept_not_applied(trainer, ctl):
    call_tool("set_weight_decay", ctl, {"weight_decay": trainer.weight_decay, "reason": "same"})
    call_tool("set_lr", ctl, {"lr": trainer.lr / 2, "reason": "halve"})
    events = len(trainer.events)
    result = ctl.commit()
    assert [c.key for c in result.applied] == ["lr"]
    assert result.kept == [f"weight_decay already {trainer.weight_decay:.6g} (no change)"]
    assert len(trainer.events) == events + 1  # only the lr change is an event


def test_stage_raw_delta_keeps_to_the_delta_norm_limit(trainer):
    weight_norm = dict(trainer.model.named_parameters())[LAYER].norm().item()
    limit = 0.1 * weight_norm
    direction = torch.ones(10, 64) / torch.ones(10, 64).norm()
    strict = TrainerControls(trainer, Bounds(delta_max_fraction=0.1))
    reply = strict.stage_raw_delta(LAYER, direction * (0.9 * limit))
    assert f"norm {0.9 * limit:.6g}" in reply
    strict.discard()
    with pytest.raises(ToolArgumentError, match=r"above the limit .*delta_max_fraction") as exc:
        strict.stage_raw_delta(LAYER, direction * (2 * limit))
    assert exc.value.argument == "delta" and strict.pending == {}
    clamped = TrainerControls(trainer, Bounds(delta_max_fraction=0.1, clamp=True))
    reply = clamped.stage_raw_delta(LAYER, direction * (2 * limit))
    staged = clamped.pending[f"delta:{LAYER}"]
    assert "scaled from norm" in reply and abs(staged.value.norm().item() - limit) < 1e-5 * limit
    assert torch.allclose(staged.value / staged.value.norm(), direction)


def test_stage_raw_delta_checks_the_shape(trainer, ctl):
    good = [[0.001] * 64 for _ in range(10)]
    ctl.stage_raw_delta(LAYER, good)
    assert ctl.pending[f"delta:{LAYER}"].value.shape == (10, 64)

    for wrong in ([[0.001] * 10 for _ in range(64)], [0.0] * 640, [[1.0, 2.0], [3.0]], None):
        with pytest.raises(ToolArgumentError, match=re.escape("expected shape (10, 64)")):
            ctl.stage_raw_delta(LAYER, wrong)
    for bad in ([[math.nan] * 64] * 10, [[10**400] * 64] * 10):
        with pytest.raises(ToolArgumentError, match="delta"):
            ctl.stage_raw_delta(LAYER, bad)
    with pytest.raises(ToolArgumentError, match="not a parameter"):
        ctl.stage_raw_delta("nope", good)

    assert trainer.pending_delta_layers == []
    ctl.commit()
    assert trainer.pending_delta_layers == [LAYER]


# ---------------------------------------------------------------------------------------- keep / rollback
def test_keep_current_changes_nothing(trainer, ctl):
    before, before_weights = knobs(trainer), weights(trainer)
    reply = call_tool("keep_current", ctl, {"reason": "training is on track"})
    assert "keeping current settings" in reply and "nothing" in reply
    result = ctl.commit()
    assert result.applied == [] and result.kept == ["training is on track"]
    assert knobs(trainer) == before and same_weights(weights(trainer), before_weights)
    assert trainer.pending_delta_layers == []


def test_rollback_restores_the_last_good_weights_after_commit(trainer, ctl):
    good = trainer.last_good
    with torch.no_grad():  # a divergence: the weights blew up
        for p in trainer.model.parameters():
            p.add_(100.0)
    trainer.set_alpha(0.7)
    broken = weights(trainer)

    reply = call_tool("rollback", ctl, {"reason": "loss diverged"})
    assert f"rollback to the state after epoch {good['epoch']} staged" in reply
    assert same_weights(weights(trainer), broken)  # not before commit

    ctl.commit()
    assert same_weights(weights(trainer), good["model"])
    assert trainer.alpha == good["knobs"]["alpha"]


def test_rollback_then_knob_change_in_one_decision(trainer, ctl):
    call_tool("set_lr", ctl, {"lr": 0.003, "reason": "test"})
    call_tool("rollback", ctl, {"reason": "diverged"})  # staged later, applied first
    ctl.commit()
    assert same_weights(weights(trainer), trainer.last_good["model"])
    assert trainer.lr == 0.003


def test_rollback_to_the_current_state_is_refused_as_a_no_op(trainer, ctl):
    """After a sound epoch the last good state *is* the current one: a rollback would change nothing."""
    trainer.run_epoch()
    assert trainer.last_good["epoch"] == trainer.epoch
    with pytest.raises(ToolArgumentError, match="nothing to roll back.*keep_current") as exc:
        call_tool("rollback", ctl, {"reason": "habit"})
    assert exc.value.argument == "rollback" and not ctl.pending


def test_rollback_without_a_good_checkpoint_is_rejected(trainer, ctl):
    trainer.last_good = None
    with pytest.raises(ToolArgumentError, match="no last good checkpoint") as exc:
        call_tool("rollback", ctl, {"reason": "diverged"})
    assert exc.value.argument == "rollback"
    assert ctl.pending == {}


# ---------------------------------------------------------------------------------------- inspection
def test_inspect_grad_norms(trainer, ctl):
    text = call_tool("inspect_grad_norms", ctl, {})
    lines = text.splitlines()
    assert lines[0].startswith("epoch 1 gradient norms")
    names = [name for name, _ in trainer.model.named_parameters()]
    assert [line.split(":")[0] for line in lines[1:]] == names
    assert all("new" in line for line in lines[1:])  # no epoch before to compare with
    assert len(text) < 600


def test_inspect_per_class_lists_the_worst_class_first(trainer, ctl):
    text = call_tool("inspect_per_class", ctl, {})
    assert text.startswith("epoch 1 per-class validation accuracy, worst first: ")
    pairs = re.findall(r"class (\d+): ([0-9.]+)", text)
    acc = trainer.history[-1].per_class_val_acc
    assert len(pairs) == trainer.num_classes
    assert int(pairs[0][0]) == min(range(len(acc)), key=lambda c: acc[c])
    values = [float(v) for _, v in pairs]
    assert values == sorted(values)
    assert len(text) < 400


def test_inspect_history(trainer, ctl):
    trainer.set_lr(0.002)
    trainer.run_epoch()
    lines = call_tool("inspect_history", ctl, {}).splitlines()
    assert lines[0].startswith("epoch | train_loss | val_loss")
    assert [line.split(" | ")[0] for line in lines[1:]] == ["1", "2"]
    assert "lr -> 0.002" in lines[2] and " 0.002 | 0.20 | 0 | 0.00 |" in lines[2]
    assert call_tool("inspect_history", ctl, {"last_n": 1}).splitlines()[1:][0].startswith("2 | ")


def test_inspection_before_any_epoch():
    ctl = TrainerControls(new_trainer())
    for name in ("inspect_grad_norms", "inspect_per_class", "inspect_history"):
        assert call_tool(name, ctl, {}) == "no epoch has run yet"


# ---------------------------------------------------------------------------------------- rejections
@pytest.mark.parametrize(
    ("tool", "args", "argument", "expected"),
    [
        ("set_lr", {"lr": 0.5}, "lr", "lr=0.5 is out of range [0.0001, 0.01]; current lr is 0.001"),
        ("set_lr", {"lr": -1.0}, "lr", "lr=-1 is out of range [0.0001, 0.01]; current lr is 0.001"),
        ("set_lr", {"lr": math.nan}, "lr", "lr=nan is not a finite number; allowed range [0.0001, 0.01]"),
        (
            "set_dropout",
            {"dropout": 1.4},
            "dropout",
            "dropout=1.4 is out of range [0, 0.5]; current dropout is 0.2",
        ),
        (
            "set_weight_decay",
            {"weight_decay": 0.5},
            "weight_decay",
            "weight_decay=0.5 is out of range [0, 0.1]",
        ),
        ("set_alpha", {"alpha": 0.9}, "alpha", "alpha=0.9 is out of range [0, 0.5]; current alpha is 0"),
        ("set_alpha", {"alpha": True}, "alpha", "alpha=True is invalid"),
        ("set_alpha", {"alpha": "lots"}, "alpha", "alpha='lots' is invalid"),
        ("set_lr", {}, "lr", "lr is required"),
        ("set_lr", {"lr": 0.002, "momentum": 0.9}, "momentum", "momentum is not an argument of set_lr"),
        ("inspect_history", {"last_n": 0}, "last_n", "last_n=0 is invalid"),
    ],
)
def test_rejection_names_argument_range_and_current_value(trainer, ctl, tool, args, argument, expected):
    before = knobs(trainer)
    with pytest.raises(ToolArgumentError) as exc:
        call_tool(tool, ctl, {"reason": "test", **args} if tool.startswith("set_") else args)
    assert expected in str(exc.value)
    assert exc.value.argument == argument
    assert ctl.pending == {} and ctl.calls[-1]["accepted"] is False
    ctl.commit()
    assert knobs(trainer) == before


def test_unknown_tool_lists_the_tools(ctl):
    with pytest.raises(ToolArgumentError) as exc:
        call_tool("set_learning_rate", ctl, {"lr": 0.002})
    assert "unknown tool 'set_learning_rate'" in str(exc.value)
    assert all(name in str(exc.value) for name in discover())


def test_arguments_must_be_an_object(ctl):
    with pytest.raises(ToolArgumentError, match="takes a JSON object"):
        call_tool("set_lr", ctl, "0.002")


# ---------------------------------------------------------------------------------------- trust region, clamp
def test_lr_trust_region_is_x10_per_decision(trainer, ctl):
    lr = trainer.lr
    with pytest.raises(ToolArgumentError, match="trust region") as exc:
        call_tool("set_lr", ctl, {"lr": lr * 10 * 1.01, "reason": "test"})
    assert "absolute bounds [1e-06, 1]" in str(exc.value)
    with pytest.raises(ToolArgumentError, match="trust region"):
        call_tool("set_lr", ctl, {"lr": lr / 10 / 1.01, "reason": "test"})
    call_tool("set_lr", ctl, {"lr": lr / 10, "reason": "edge"})
    call_tool("set_lr", ctl, {"lr": lr * 10, "reason": "edge"})
    ctl.commit()
    assert trainer.lr == lr * 10


@pytest.mark.parametrize(
    ("knob", "current", "edge"),
    # current * 10 and current + 0.3 are not exactly the decimal edge in floating point
    [("lr", 3e-4, 3e-3), ("lr", 3e-3, 3e-4), ("dropout", 0.6, 0.9), ("weight_decay", 3e-4, 3e-3)],
)
def test_decimal_trust_region_edge_is_accepted(trainer, knob, current, edge):
    getattr(trainer, f"set_{knob}")(current)
    ctl = TrainerControls(trainer)
    call_tool(f"set_{knob}", ctl, {knob: edge, "reason": "edge"})
    ctl.commit()
    assert getattr(trainer, knob) == pytest.approx(edge, rel=1e-9)


def test_clamp_clamps_and_says_so(trainer):
    ctl = TrainerControls(trainer, Bounds(clamp=True))
    reply = call_tool("set_lr", ctl, {"lr": 5.0, "reason": "test"})
    assert "clamped from 5 to 0.01" in reply
    reply = call_tool("set_dropout", ctl, {"dropout": -1.0, "reason": "test"})
    assert "clamped" in reply
    reply = call_tool(
        "propose_weight_delta",
        ctl,
        {"layer": LAYER, "operation": "noise", "magnitude": 3.0, "reason": "test"},
    )
    assert "clamped from 3 to 0.1" in reply
    with pytest.raises(ToolArgumentError, match="not a finite number"):  # clamping never invents a value
        call_tool("set_alpha", ctl, {"alpha": math.inf, "reason": "test"})
    ctl.commit()
    assert trainer.lr == 0.01 and trainer.dropout == 0.0


def test_same_knob_twice_the_later_call_wins(trainer, ctl):
    first = call_tool("set_lr", ctl, {"lr": 0.002, "reason": "first"})
    assert "replaces" not in first
    second = call_tool("set_lr", ctl, {"lr": 0.004, "reason": "second"})
    assert "replaces the earlier set_lr call for lr in this decision: 0.002" in second
    result = ctl.commit()
    assert [(c.key, c.value, c.reason) for c in result.applied] == [("lr", 0.004, "second")]
    assert trainer.lr == 0.004


# ---------------------------------------------------------------------------------------- concurrency
def test_parallel_staging_from_eight_threads(trainer, ctl):
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []
    # Every thread's value differs from the knob's current one (lr 0.001, dropout 0.2, weight decay 0, alpha 0):
    # a knob set to its current value is kept, not changed, so whichever thread wins, every knob changes.
    values = {"lr": [0.0015 + 0.0005 * i for i in range(8)], "dropout": [0.25 + 0.025 * i for i in range(8)]}
    values |= {
        "alpha": [0.05 * (i + 1) for i in range(8)],
        "weight_decay": [0.001 * (i + 1) for i in range(8)],
    }
    before = knobs(trainer)
    assert all(before[k] not in values[k] for k in KNOBS), before

    def worker(i: int) -> None:
        try:
            barrier.wait()
            for knob in KNOBS:
                call_tool(f"set_{knob}", ctl, {knob: values[knob][i], "reason": f"thread {i}"})
            ctl.stage_raw_delta(LAYER, torch.full((10, 64), 1e-4 * i))
        except BaseException as exc:  # noqa: B036 - collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(ctl.pending) == sorted([*KNOBS, f"delta:{LAYER}"])
    assert len(ctl.calls) == 8 * 4 and all(c["accepted"] for c in ctl.calls)
    staged = {k: ctl.pending[k].value for k in KNOBS}
    assert all(staged[k] in values[k] for k in KNOBS)
    seqs = [c.seq for c in ctl.pending.values()]
    assert len(set(seqs)) == len(seqs)

    result = ctl.commit()
    assert sorted(result.changed_knobs) == sorted([*KNOBS, f"delta:{LAYER}"])
    assert knobs(trainer) == staged
    assert result.kept == []
    assert trainer.pending_delta_layers == [LAYER]


def test_tool_node_runs_parallel_calls_and_returns_rejections_as_error_messages(trainer, ctl):
    with pytest.raises(ToolArgumentError) as exc:
        call_tool("set_lr", TrainerControls(trainer), {"lr": 0.5, "reason": "test"})
    calls = [tool_call("set_lr", {"lr": 0.5, "reason": "test"}, "bad")]
    calls += [tool_call("set_dropout", {"dropout": 0.1 + 0.01 * i, "reason": "x"}, f"d{i}") for i in range(6)]
    calls += [tool_call("set_alpha", {"alpha": 0.2, "reason": "x", "self": 1}, "self_key")]
    calls += [tool_call("set_alpha", {"alpha": 0.2, "reason": "x", "run_manager": 1}, "run_manager_key")]
    calls += [tool_call("inspect_per_class", {}, "inspect")]
    replies = run_tool_node(ctl, calls)

    assert replies["bad"].status == "error" and replies["bad"].content == str(exc.value)
    assert all(replies[f"d{i}"].status == "success" for i in range(6))
    assert "self is not an argument of set_alpha" in replies["self_key"].content
    assert "run_manager is not an argument of set_alpha" in replies["run_manager_key"].content
    assert replies["self_key"].status == replies["run_manager_key"].status == "error"
    assert "worst first" in replies["inspect"].content
    assert sorted(ctl.pending) == ["dropout"]
    result = ctl.commit()
    assert result.changed_knobs == ["dropout"]
    assert trainer.dropout in [0.1 + 0.01 * i for i in range(6)]
    assert trainer.lr == 0.001


# ---------------------------------------------------------------------------------------- atomic commit
def test_commit_is_atomic_when_a_setter_fails(trainer, ctl, monkeypatch):
    before, before_weights = knobs(trainer), weights(trainer)
    before_events = list(trainer.events)
    for knob, value in {"lr": 0.005, "weight_decay": 0.01, "dropout": 0.4, "alpha": 0.3}.items():
        call_tool(f"set_{knob}", ctl, {knob: value, "reason": "test"})
    call_tool(
        "propose_weight_delta", ctl, {"layer": LAYER, "operation": "noise", "magnitude": 0.05, "reason": "t"}
    )

    def broken(alpha: float) -> None:  # applied after weight decay, lr and dropout
        raise RuntimeError("disk full")

    monkeypatch.setattr(trainer, "set_alpha", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        ctl.commit()
    assert knobs(trainer) == before
    assert all(m.p == before["dropout"] for m in dropout_modules(trainer.model))
    assert all(g["lr"] == before["lr"] for g in trainer.optimizer.param_groups)
    assert trainer.pending_delta_layers == []
    assert same_weights(weights(trainer), before_weights)
    assert trainer.events == before_events


def test_commit_is_atomic_after_a_rollback(trainer, ctl, monkeypatch):
    with torch.no_grad():
        next(trainer.model.parameters()).add_(1.0)
    before, before_weights = knobs(trainer), weights(trainer)
    call_tool("rollback", ctl, {"reason": "diverged"})
    call_tool("set_dropout", ctl, {"dropout": 0.4, "reason": "test"})

    def broken(p: float) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(trainer, "set_dropout", broken)
    with pytest.raises(RuntimeError, match="boom"):
        ctl.commit()
    assert same_weights(weights(trainer), before_weights)
    assert knobs(trainer) == before
