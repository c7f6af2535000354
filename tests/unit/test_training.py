"""The epoch-pausable Trainer: knobs, schedules, checkpoints, the modulated update and determinism.

Everything runs on the digits task on CPU in a few seconds.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mimic_learn.training import KnobError, ShapeMismatchError, TrainConfig, Trainer, load_task
from mimic_learn.training.models import dropout_modules

REPORT_NUMBERS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "per_class_val_acc",
    "grad_norms",
    "lr",
    "dropout",
    "weight_decay",
    "alpha",
    "steps",
    "delta_layers",
)
LAYER = "net.4.weight"  # DigitsNet's classifier, shape (10, 64)


def make_trainer(**overrides) -> Trainer:
    cfg = {"task": "digits", "regime": 200, "epochs": 4, "batch_size": 32, "seed": 0, "num_threads": 2}
    cfg.update(overrides)
    return Trainer.from_config(TrainConfig(**cfg))


def numbers(report) -> dict:
    return {key: getattr(report, key) for key in REPORT_NUMBERS}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def record_step_lrs(trainer: Trainer) -> list[float]:
    """The lr in force at every optimizer step, recorded as the step runs."""
    lrs: list[float] = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"]))
    return lrs


# ---------------------------------------------------------------------------------------------- knobs
def _knob_state(t: Trainer) -> dict:
    return {
        "lr": t.lr,
        "dropout": t.dropout,
        "weight_decay": t.weight_decay,
        "alpha": t.alpha,
        "pending": t.pending_delta_layers,
        "events": len(t.events),
        "params": snapshot(t.model),
        "optimizer_groups": [{k: v for k, v in g.items() if k != "params"} for g in t.optimizer.param_groups],
    }


def _assert_unchanged(before: dict, t: Trainer) -> None:
    after = _knob_state(t)
    assert_same_params(before.pop("params"), after.pop("params"))
    assert after == before


BAD_KNOBS = [
    ("set_lr", "lr", float("nan")),
    ("set_lr", "lr", float("inf")),
    ("set_lr", "lr", -1e-3),
    ("set_lr", "lr", 0.0),
    ("set_lr", "lr", 50.0),
    ("set_lr", "lr", "fast"),
    ("set_lr", "lr", None),
    ("set_dropout", "dropout", float("nan")),
    ("set_dropout", "dropout", -0.1),
    ("set_dropout", "dropout", 1.5),
    ("set_dropout", "dropout", "half"),
    ("set_weight_decay", "weight_decay", float("-inf")),
    ("set_weight_decay", "weight_decay", -1e-4),
    ("set_weight_decay", "weight_decay", 2.0),
    ("set_weight_decay", "weight_decay", [0.1]),
    ("set_alpha", "alpha", float("nan")),
    ("set_alpha", "alpha", -0.1),
    ("set_alpha", "alpha", 1.5),
    ("set_alpha", "alpha", "all"),
    ("set_alpha", "alpha", True),
]


@pytest.mark.parametrize("setter, knob, value", BAD_KNOBS)
def test_bad_knob_value_raises_a_knob_error_and_changes_nothing(setter, knob, value):
    t = make_trainer(weight_decay=1e-4, alpha=0.25)
    t.run_epoch()
    t.set_delta({LAYER: torch.zeros(10, 64)})
    before = _knob_state(t)
    current = before[knob]
    with pytest.raises(KnobError) as excinfo:
        getattr(t, setter)(value)
    message = str(excinfo.value)
    shown = str(float(value)) if isinstance(value, float) else repr(value)
    assert f"{knob}={shown}" in message  # the value
    assert "[" in message and "]" in message  # the allowed range
    assert f"current {knob} is {current}" in message  # the current value
    _assert_unchanged(before, t)
    assert t.run_epoch().finite


def test_knob_error_names_the_range():
    t = make_trainer()
    with pytest.raises(
        KnobError, match=r"dropout=1\.4 is out of range \[0\.0, 0\.99\]; current dropout is 0\.2"
    ):
        t.set_dropout(1.4)


def test_dropout_on_a_model_without_dropout_is_a_knob_error():
    data = load_task("digits", 100)
    t = Trainer(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), data, TrainConfig(epochs=2))
    before = _knob_state(t)
    with pytest.raises(KnobError, match=r"dropout=0\.3 .*no dropout.*current dropout is None"):
        t.set_dropout(0.3)
    _assert_unchanged(before, t)


def test_good_knob_values_take_effect_and_are_logged():
    t = make_trainer()
    t.run_epoch()
    t.set_lr(3e-3)
    t.set_weight_decay(1e-3)
    t.set_alpha(0.5)
    t.set_dropout(0.35)
    assert (t.lr, t.weight_decay, t.alpha, t.dropout) == (3e-3, 1e-3, 0.5, 0.35)
    assert all(g["lr"] == 3e-3 and g["weight_decay"] == 1e-3 for g in t.optimizer.param_groups)
    lrs = record_step_lrs(t)
    report = t.run_epoch()
    assert set(lrs) == {3e-3}
    assert (report.lr, report.weight_decay, report.alpha, report.dropout) == (3e-3, 1e-3, 0.5, 0.35)
    assert report.events == ["lr -> 0.003", "weight_decay -> 0.001", "alpha -> 0.5", "dropout -> 0.35"]
    assert [e["after_epoch"] for e in t.events] == [1, 1, 1, 1]


def test_dropout_change_reaches_every_dropout_module():
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.Dropout(0.1),
        nn.ReLU(),
        nn.Sequential(nn.Linear(32, 32), nn.Dropout(0.2), nn.AlphaDropout(0.3)),
        nn.Linear(32, 10),
    )
    t = Trainer(model, load_task("digits", 100), TrainConfig(epochs=2))
    assert len(dropout_modules(t.model)) == 3
    ckpt = t.checkpoint()
    t.set_dropout(0.45)
    assert [m.p for m in dropout_modules(t.model)] == [0.45, 0.45, 0.45]
    assert t.run_epoch().dropout == 0.45
    t.restore_weights(ckpt)  # a rollback puts every module back to the checkpoint's dropout
    assert [m.p for m in dropout_modules(t.model)] == [0.1, 0.1, 0.1]


def test_configured_dropout_reaches_the_model():
    t = make_trainer(dropout=0.05)
    assert [m.p for m in dropout_modules(t.model)] == [0.05]


# ---------------------------------------------------------------------------------------------- lr vs schedules
def test_steplr_decays_from_the_lr_that_was_set():
    plain = make_trainer(schedule="step", step_size=2, gamma=0.1)
    assert [plain.run_epoch().lr for _ in range(4)] == pytest.approx([1e-3, 1e-4, 1e-4, 1e-5], rel=1e-12)

    t = make_trainer(schedule="step", step_size=2, gamma=0.1)
    t.run_epoch()
    t.set_lr(4e-4)
    assert t.lr == 4e-4
    lrs = record_step_lrs(t)
    reports = [t.run_epoch() for _ in range(3)]
    assert lrs[: t.steps_per_epoch] == [4e-4] * t.steps_per_epoch  # epoch 2 trains at the set lr
    assert [r.lr for r in reports] == pytest.approx([4e-5, 4e-5, 4e-6], rel=1e-12)


def test_plateau_keeps_reducing_from_the_lr_that_was_set():
    t = make_trainer(schedule="plateau", plateau_patience=0, gamma=0.5)
    first = t.run_epoch()
    assert first.lr == 1e-3
    t.set_lr(5.0)  # far too high for Adam: validation loss gets worse, so the plateau schedule cuts
    second, third = t.run_epoch(), t.run_epoch()
    assert second.val_loss > first.val_loss and third.val_loss > first.val_loss
    assert second.lr == pytest.approx(2.5, rel=1e-12)
    assert third.lr == pytest.approx(1.25, rel=1e-12)


@pytest.mark.parametrize("factor", [0.5, 3.0])
def test_onecycle_set_lr_rescales_the_rest_of_the_cycle(factor):
    base = make_trainer(schedule="onecycle", lr=1e-2)
    base_lrs = record_step_lrs(base)
    for _ in range(4):
        base.run_epoch()

    t = make_trainer(schedule="onecycle", lr=1e-2)
    lrs = record_step_lrs(t)
    t.run_epoch()
    current = t.lr
    t.set_lr(current * factor)
    assert t.lr == pytest.approx(current * factor, rel=1e-12)
    for _ in range(3):
        t.run_epoch()

    n = t.steps_per_epoch
    assert len(lrs) == len(base_lrs) == 4 * n
    assert lrs[:n] == base_lrs[:n]
    assert lrs[n:] == pytest.approx([lr * factor for lr in base_lrs[n:]], rel=1e-9)
    assert t.history[-1].lr == pytest.approx(base.history[-1].lr * factor, rel=1e-9)


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_restore_reruns_an_epoch_exactly():
    t = make_trainer(schedule="step", step_size=1, gamma=0.5, weight_decay=1e-4)
    t.run_epoch()
    ckpt = t.checkpoint()
    first = t.run_epoch()
    params_first = snapshot(t.model)
    t.run_epoch()  # move further on, so that restore has something to undo

    t.restore(ckpt)
    assert t.epoch == 1 and len(t.history) == 1
    again = t.run_epoch()
    assert numbers(again) == numbers(first)
    assert_same_params(snapshot(t.model), params_first)


def test_checkpoint_on_disk_restores_exactly_in_a_fresh_trainer(tmp_path):
    t = make_trainer(optimizer="sgd", schedule="onecycle", lr=5e-2)
    t.run_epoch()
    path = t.save_checkpoint(tmp_path / "ckpt" / "one.pt")
    expected = [t.run_epoch() for _ in range(2)]
    expected_params = snapshot(t.model)

    raw = torch.load(path, map_location="cpu", weights_only=True)  # loadable without unpickling code
    assert raw["epoch"] == 1
    fresh = make_trainer(optimizer="sgd", schedule="onecycle", lr=5e-2)
    fresh.restore(Trainer.load_checkpoint(path))
    got = [fresh.run_epoch() for _ in range(2)]
    assert [numbers(r) for r in got] == [numbers(r) for r in expected]
    assert_same_params(snapshot(fresh.model), expected_params)
    assert [numbers(r) for r in fresh.history] == [numbers(r) for r in t.history]
    assert not list((tmp_path / "ckpt").glob("*.tmp"))


def test_disk_retention_keeps_the_last_k_boundaries(tmp_path):
    ckpt_dir = tmp_path / "ckpts"
    t = make_trainer(checkpoint_dir=str(ckpt_dir), keep_checkpoints=2)
    assert [p.name for p in ckpt_dir.iterdir()] == ["epoch_0000.pt"]
    for _ in range(4):
        t.run_epoch()
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["epoch_0003.pt", "epoch_0004.pt"]
    latest = t.latest_disk_checkpoint()
    assert latest.name == "epoch_0004.pt"
    on_disk = Trainer.load_checkpoint(latest)
    assert on_disk["epoch"] == 4
    assert_same_params(on_disk["model"], snapshot(t.model))


def test_pre_decision_holds_the_last_two_boundaries():
    t = make_trainer()
    assert sorted(t.pre_decision) == [0]
    boundary_params = {0: snapshot(t.model)}
    for epoch in (1, 2, 3):
        t.run_epoch()
        boundary_params[epoch] = snapshot(t.model)
    assert sorted(t.pre_decision) == [2, 3]
    for epoch in (2, 3):
        assert t.pre_decision[epoch]["epoch"] == epoch
        assert_same_params(t.pre_decision[epoch]["model"], boundary_params[epoch])
    # The checkpoint is a copy: training on does not change it.
    t.run_epoch()
    assert_same_params(t.pre_decision[3]["model"], boundary_params[3])

    t.restore_weights(t.pre_decision[3])
    assert t.epoch == 4 and len(t.history) == 4  # a rollback moves weights back, not the clock
    assert_same_params(snapshot(t.model), boundary_params[3])
    assert t.events[-1]["event"] == "rollback: restored the state of epoch 3"


def test_last_good_skips_a_boundary_with_non_finite_losses():
    t = make_trainer()
    t.run_epoch()
    assert t.last_good["epoch"] == 1
    good_params = snapshot(t.model)
    with torch.no_grad():
        t.model.net[4].weight.fill_(float("nan"))  # poison the classifier
    bad = t.run_epoch()
    assert not bad.finite and math.isnan(bad.train_loss)
    assert t.last_good["epoch"] == 1
    assert t.pre_decision[2]["epoch"] == 2  # pre-decision keeps every boundary, good or not
    assert_same_params(t.last_good["model"], good_params)

    t.restore_weights(t.last_good)
    recovered = t.run_epoch()
    assert recovered.finite and recovered.epoch == 3
    assert t.last_good["epoch"] == 3


def test_both_trainers_are_steerable_from_one_base():
    from mimic_learn.training.loop import LoopTrainer
    from mimic_learn.training.steerable import Steerable
    from mimic_learn.training.trainer import BaseTrainer

    model = nn.Linear(2, 1)
    loop = LoopTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), monitor="loss")
    ours = make_trainer()
    for trainer in (ours, loop):
        assert isinstance(trainer, Steerable) and isinstance(trainer, BaseTrainer)
    assert not isinstance(loop, Trainer)  # a user's loop is not our Trainer with half its __init__ skipped
    assert (ours.monitor, ours.mode, loop.monitor, loop.mode) == ("val_acc", "max", "loss", "min")
    assert loop.rng is None and loop.checkpoint()["rng"] == {}  # the user's loop owns its RNG
    assert loop.epoch == 0 and sorted(loop.pre_decision) == [0] and loop.last_good["epoch"] == 0
    loop.detach()


def _poison(t: Trainer) -> None:
    with torch.no_grad():
        t.model.net[4].weight.fill_(float("nan"))


def test_guard_rolls_a_diverged_epoch_back_through_the_controls():
    from mimic_learn.tools.controls import TrainerControls
    from mimic_learn.training.guard import EpochGuard

    t = make_trainer()
    controls, guard = TrainerControls(t), EpochGuard()
    first = t.run_epoch()
    assert guard.inspect(t, first) is None
    good_params = snapshot(t.model)
    _poison(t)
    bad = t.run_epoch()
    trip = guard.inspect(t, bad)
    assert trip.epoch == 2 and trip.target["epoch"] == 1 and "not finite" in trip.why
    note = guard.roll_back(trip, controls, blamed="no decision to blame")
    assert note.startswith("Guard after epoch 2: train loss nan") and "state after epoch 1" in note
    assert guard.rollbacks == 1 and t.epoch == 2  # the clock goes on
    assert_same_params(snapshot(t.model), good_params)
    assert t.events[-1]["event"] == "guard rollback: restored the state of epoch 1"
    # the restored state is now this boundary's good and pre-decision state: a later revert returns to it
    assert t.last_good is t.pre_decision[2] and t.last_good["epoch"] == 2
    assert_same_params(t.last_good["model"], good_params)


def test_guard_rolls_a_gradient_explosion_back_to_the_boundary_before_it():
    import dataclasses

    from mimic_learn.tools.controls import TrainerControls
    from mimic_learn.training.guard import EpochGuard

    t = make_trainer()
    t.run_epoch()
    before_params = snapshot(t.model)
    t.run_epoch()
    calm = t.history[-1]
    assert EpochGuard(grad_factor=1e3).inspect(t, calm) is None
    t.history[-1] = exploded = dataclasses.replace(
        calm, grad_norms={k: v * 1e4 for k, v in calm.grad_norms.items()}
    )
    assert EpochGuard(grad_factor=1e5).inspect(t, exploded) is None  # within the allowed growth
    guard = EpochGuard(grad_factor=1e3)
    trip = guard.inspect(t, exploded)
    assert trip.target["epoch"] == 1 and trip.why.startswith("gradient norm exploded")
    guard.roll_back(trip, TrainerControls(t), blamed="no decision to blame")
    assert_same_params(snapshot(t.model), before_params)


def test_guard_without_an_earlier_state_does_nothing():
    from mimic_learn.training.guard import EpochGuard

    t = make_trainer()
    _poison(t)
    bad = t.run_epoch()
    t.last_good = None
    assert EpochGuard().inspect(t, bad) is None


def test_mark_boundary_rewrites_the_file_on_disk_only_for_a_good_state(tmp_path):
    from mimic_learn.training import checkpoints

    folder = tmp_path / "ckpts"
    t = make_trainer(checkpoint_dir=str(folder), keep_checkpoints=2)
    t.run_epoch()
    on_disk = checkpoints.load(checkpoints.epoch_file(folder, 1))
    with torch.no_grad():
        t.model.net[4].weight.add_(1.0)
    t.mark_boundary(good=False)
    assert_same_params(checkpoints.load(checkpoints.epoch_file(folder, 1))["model"], on_disk["model"])
    assert_same_params(t.pre_decision[1]["model"], snapshot(t.model))
    assert_same_params(t.last_good["model"], on_disk["model"])
    t.mark_boundary(good=True)
    assert_same_params(checkpoints.load(checkpoints.epoch_file(folder, 1))["model"], snapshot(t.model))
    assert_same_params(t.last_good["model"], snapshot(t.model))
    assert checkpoints.latest_file(folder) == t.latest_disk_checkpoint() == checkpoints.epoch_file(folder, 1)


def test_snapshot_round_trips_staged_deltas_and_a_portable_one_drops_functions():
    from mimic_learn.training import checkpoints

    t = make_trainer()
    t.run_epoch()
    shape = t.model.net[4].weight.shape
    t.set_alpha(0.5)
    t.set_delta({LAYER: torch.full(shape, 0.01), "net.4.bias": lambda g, p: -g})
    snap = t.snapshot()
    t.run_epoch()
    t.restore_snapshot(snap)
    assert t.epoch == 1 and t.pending_delta_layers == sorted([LAYER, "net.4.bias"])
    assert t.alpha == 0.5 and t.history[-1].epoch == 1
    portable = checkpoints.portable_snapshot(snap)
    assert list(portable["deltas"]) == [LAYER] and portable["deltas"][LAYER].device.type == "cpu"


# ---------------------------------------------------------------------------------------------- the update rule
def plain_loop(model: nn.Module, cfg: TrainConfig, data, epochs: int, mix=None) -> list[float]:
    """A hand-written PyTorch loop over the batches the Trainer sees; ``mix(name, param, old)`` may rewrite a step."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    named = dict(model.named_parameters())
    losses = []
    n = len(data.train)
    for _ in range(epochs):
        model.train()
        loss_sum = torch.zeros(())
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            x, y = data.train.x[idx], data.train.y[idx]
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            old = {k: p.detach().clone() for k, p in named.items()}
            opt.step()
            if mix is not None:
                with torch.no_grad():
                    mix(named, old)
            loss_sum += loss.detach() * len(y)
        losses.append((loss_sum / n).item())
    return losses


@pytest.mark.parametrize(
    "overrides, stage_delta",
    [
        ({"optimizer": "adam"}, False),
        ({"optimizer": "adam", "weight_decay": 1e-3, "dropout": 0.3}, False),
        ({"optimizer": "sgd", "momentum": 0.9, "lr": 0.05, "weight_decay": 1e-4}, False),
        ({"optimizer": "adam", "alpha": 0.0}, True),  # a delta with alpha == 0 does nothing
        ({"optimizer": "sgd", "alpha": 0.7, "lr": 0.05}, False),  # alpha without a delta does nothing
    ],
)
def test_trainer_epoch_is_bitwise_a_plain_pytorch_loop(overrides, stage_delta):
    t = make_trainer(**overrides)
    model = copy.deepcopy(t.model)
    if stage_delta:
        t.set_delta({LAYER: torch.full((10, 64), 0.5)})
    reports = [t.run_epoch() for _ in range(3)]
    losses = plain_loop(model, t.config, t.data, epochs=3)
    assert [r.train_loss for r in reports] == losses
    assert_same_params(snapshot(t.model), snapshot(model))


def test_delta_step_is_the_alpha_mix_of_base_step_and_delta():
    alpha = 0.3
    t = make_trainer(lr=1e-2, alpha=alpha)
    model = copy.deepcopy(t.model)
    reference = copy.deepcopy(t.model)
    delta = torch.randn(10, 64, generator=torch.Generator().manual_seed(1)) * 0.5
    t.set_delta({LAYER: delta})
    report = t.run_epoch()
    assert report.delta_layers == [LAYER]
    steps = t.steps_per_epoch

    def mix(named, old):
        p = named[LAYER]
        base_step = p - old[LAYER]
        p.copy_(old[LAYER] + (1 - alpha) * base_step + alpha * delta / steps)

    losses = plain_loop(model, t.config, t.data, epochs=1, mix=mix)
    assert report.train_loss == pytest.approx(losses[0], rel=1e-6)
    for key, value in snapshot(model).items():
        torch.testing.assert_close(t.model.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    # ... and the mix made a real difference against the base optimizer alone.
    plain_loop(reference, t.config, t.data, epochs=1)
    moved = (t.model.state_dict()[LAYER] - reference.state_dict()[LAYER]).abs().max().item()
    assert moved > 1e-2
    # A delta lasts one epoch.
    assert t.pending_delta_layers == []
    assert t.run_epoch().delta_layers == []


def test_alpha_one_moves_the_layer_by_exactly_the_delta():
    t = make_trainer(alpha=1.0)
    start = t.model.state_dict()[LAYER].clone()
    other_start = t.model.state_dict()["net.1.weight"].clone()
    delta = torch.randn(10, 64, generator=torch.Generator().manual_seed(2)) * 0.1
    t.set_delta({LAYER: delta})
    t.run_epoch()
    torch.testing.assert_close(t.model.state_dict()[LAYER] - start, delta, rtol=0, atol=1e-6)
    assert not torch.equal(t.model.state_dict()["net.1.weight"], other_start)  # other layers still train


def test_callable_delta_is_evaluated_at_every_step_on_the_current_gradient():
    t = make_trainer(alpha=0.5)
    param = t.model.get_parameter(LAYER)
    true_grads, params_before_step, calls = [], [], []
    param.register_hook(lambda g: true_grads.append(g.detach().clone()))
    t.optimizer.register_step_pre_hook(lambda *_: params_before_step.append(param.detach().clone()))

    def delta_fn(grad: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        calls.append((grad.clone(), current.clone()))
        return -grad * 0.1

    t.set_delta({LAYER: delta_fn})
    report = t.run_epoch()
    assert len(calls) == t.steps_per_epoch == report.steps
    for (grad, current), true_grad, before in zip(calls, true_grads, params_before_step, strict=True):
        assert torch.equal(grad, true_grad)
        assert torch.equal(current, before)
    assert len({c[0].sum().item() for c in calls}) == len(calls)  # a new gradient every step
    t.run_epoch()
    assert len(calls) == t.steps_per_epoch  # not called again: a delta is for one epoch


def test_wrong_delta_shape_names_both_shapes_and_stages_nothing():
    t = make_trainer(alpha=0.5)
    with pytest.raises(ShapeMismatchError, match=r"\(3, 3\).*\(10, 64\)"):
        t.set_delta({"net.1.bias": torch.zeros(64), LAYER: torch.zeros(3, 3)})
    assert t.pending_delta_layers == []
    with pytest.raises(ShapeMismatchError, match=r"\(10, 64\)"):
        t.set_delta({LAYER: [[0.0, 1.0], [2.0]]})  # ragged
    with pytest.raises(KnobError, match="unknown parameter 'nope'"):
        t.set_delta({"nope": torch.zeros(1)})
    with pytest.raises(KnobError, match="NaN or inf"):
        t.set_delta({LAYER: torch.full((10, 64), float("inf"))})
    assert t.pending_delta_layers == []
    assert isinstance(ShapeMismatchError("x"), KnobError)


def test_nested_list_delta_of_the_right_shape_is_accepted():
    t = make_trainer(alpha=1.0)
    start = t.model.state_dict()[LAYER].clone()
    delta = torch.full((10, 64), 0.01)
    t.set_delta({LAYER: delta.tolist()})
    assert t.pending_delta_layers == [LAYER]
    assert t.run_epoch().delta_layers == [LAYER]
    torch.testing.assert_close(t.model.state_dict()[LAYER] - start, delta, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- determinism
def test_same_seed_same_history_different_seed_different_history():
    a, b, c = make_trainer(), make_trainer(), make_trainer(seed=1)  # built before any of them trains
    for _ in range(3):
        for t in (a, b, c):  # interleaved epochs
            t.run_epoch()
            torch.manual_seed(1234)  # other code using the global RNG at a pause point changes nothing
            torch.rand(100)
    assert [numbers(r) for r in a.history] == [numbers(r) for r in b.history]
    assert_same_params(snapshot(a.model), snapshot(b.model))
    assert [numbers(r) for r in a.history] != [numbers(r) for r in c.history]
    assert a.test() == b.test()


def test_report_contents():
    t = make_trainer()
    report = t.run_epoch()
    assert report.epoch == 1 and report.steps == t.steps_per_epoch == math.ceil(200 / 32)
    assert list(report.grad_norms) == [name for name, _ in t.model.named_parameters()]
    assert all(v > 0 and math.isfinite(v) for v in report.grad_norms.values())
    assert len(report.per_class_val_acc) == 10
    val_counts = torch.bincount(t.data.val.y, minlength=10).float()
    weighted = (torch.tensor(report.per_class_val_acc) * val_counts).sum().item() / len(t.data.val)
    assert weighted == pytest.approx(report.val_acc, abs=1e-6)
    assert 0.0 <= report.train_acc <= 1.0 and report.wall_time > 0
    assert t.evaluate("val").loss == pytest.approx(report.val_loss)
    assert report.to_dict()["epoch"] == 1


def test_data_on_device_default_follows_the_device_and_changes_no_result():
    # On the CPU the default keeps the caller's tensors; asking for data on the device gives the same run.
    auto = make_trainer(device="cpu")
    assert auto.config.data_on_device is None and auto.data.train.x.device.type == "cpu"
    forced = make_trainer(device="cpu", data_on_device=True)
    for _ in range(2):
        a, b = auto.run_epoch(), forced.run_epoch()
        assert (a.train_loss, a.val_acc) == (b.train_loss, b.val_acc)
    for p, q in zip(auto.model.parameters(), forced.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_task_data_to_keeps_the_split_bookkeeping():
    data = load_task("digits", regime=100, seed=1)
    moved = data.to("cpu")
    assert moved.source == data.source and moved.num_classes == data.num_classes
    assert (moved.train_indices == data.train_indices).all() and (moved.val_indices == data.val_indices).all()
    assert torch.equal(moved.train.x, data.train.x) and torch.equal(moved.test.y, data.test.y)


@pytest.mark.slow
def test_gpu_check_script_passes_its_checks_on_the_cpu(capsys):
    # benchmarks/gpu_check.py was run on a lent H100 (docs/results/gpu_check_h100.log); here its checks run on
    # the CPU so that the script itself cannot rot.
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.set_num_threads(2)
    status = module.main(["--device", "cpu", "--check-n-train", "64", "--skip-throughput"])
    out = capsys.readouterr().out
    assert status == 0, out
    lines = out.splitlines()
    assert sum(line.startswith("ok   ") for line in lines) == 9 and not any(
        line.startswith("FAIL") for line in lines
    )
