"""Property tests over every registered tool (``discover()``): arbitrary arguments never raise anything but
``ToolArgumentError`` naming the offending argument, a commit never leaves a knob out of bounds or
non-finite, and arguments inside the allowed range are applied.

One trainer (digits, one epoch trained) is restored before each example.
"""

from __future__ import annotations

import math
from typing import Literal, get_args, get_origin

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mimic_learn.tools import Bounds, ToolArgumentError, TrainerControls, call_tool, discover
from mimic_learn.training import TrainConfig, Trainer
from mimic_learn.training.knobs import KNOBS as KNOB_TABLE

KNOBS = tuple(KNOB_TABLE)  # every knob of the table (lr, dropout, weight_decay, alpha, max_grad_norm, ...)
OPERATIONS = ("scale", "shrink_toward_init", "noise", "toward_grad_direction")
TOOLS = sorted(discover())
SETTINGS = {"deadline": None, "database": None, "suppress_health_check": [HealthCheck.too_slow]}


@pytest.fixture(scope="module")
def setup() -> tuple[Trainer, dict]:
    trainer = Trainer.from_config(TrainConfig(task="digits", epochs=3))
    trainer.run_epoch()  # history for the inspect tools, a last good checkpoint for rollback
    return trainer, trainer.checkpoint()


def fresh_controls(setup, bounds: Bounds | None = None) -> TrainerControls:
    trainer, ckpt = setup
    trainer.restore(ckpt)
    return TrainerControls(trainer, bounds)


NASTY = st.sampled_from(
    [math.nan, math.inf, -math.inf, -1.0, 0, -0.0, 1e308, -1e308, 10**400, -(10**400), 1e-320]
    + [True, False, None, "", "abc", "0.005", "nan", "inf", [], {}, [[1.0, 2.0], [3.0, 4.0]]]
)
JUNK = st.one_of(
    NASTY,
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.lists(st.floats(), max_size=4),
    st.lists(st.lists(st.floats(width=32), min_size=3, max_size=3), max_size=3),  # a matrix
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def valid_value(ctl: TrainerControls, field: str, annotation=None) -> st.SearchStrategy:
    """Values a correct caller could send for ``field``: inside the allowed range, known names."""
    if get_origin(annotation) is Literal:  # an enum argument (e.g. adjust's action): any of its values
        return st.sampled_from(get_args(annotation))
    if field in KNOBS:
        low, high = ctl.allowed_range(field)
        return st.floats(low, high)
    if field == "magnitude":
        return st.floats(0.0, ctl.bounds.delta_max_fraction)
    if field == "layer":
        return st.sampled_from([name for name, _ in ctl.trainer.model.named_parameters()])
    if field == "operation":
        return st.sampled_from(OPERATIONS)
    if field == "last_n":
        return st.integers(1, 200)
    return st.text(min_size=1, max_size=40)  # reason, and a new tool's text fields


def odd_value(field: str) -> st.SearchStrategy:
    """Junk of every type, plus near misses for the known fields."""
    near = {
        "layer": st.sampled_from(["fc.9.weight", "", "net.1", "NET.1.WEIGHT"]),
        "operation": st.sampled_from(["explode", "", "SCALE"]),
        "reason": st.text(min_size=490, max_size=520),  # around the 500-character limit
    }.get(field, st.nothing())
    big_numbers = st.floats(-1e3, 1e3) if field in (*KNOBS, "magnitude", "last_n") else st.nothing()
    return st.one_of(JUNK, near, big_numbers)


@st.composite
def arguments(draw, ctl: TrainerControls, tool: str, valid_only: bool) -> dict:
    fields = discover()[tool].args.model_fields
    args = {}
    for field in fields:
        roll = 9 if valid_only else draw(st.integers(0, 9))
        if roll == 0:
            continue  # a missing argument
        args[field] = draw(
            odd_value(field) if roll <= 3 else valid_value(ctl, field, fields[field].annotation)
        )
    if not valid_only and draw(st.integers(0, 9)) == 0:
        args[draw(st.sampled_from(["extra", "self", "run_manager", "lr", "layer", "", "__raw__"]))] = draw(
            JUNK
        )
    return args


def check_bounds(ctl: TrainerControls) -> None:
    trainer = ctl.trainer
    for knob in KNOBS:
        value = ctl.current(knob)
        low, high = getattr(ctl.bounds, knob)
        assert math.isfinite(value) and low <= value <= high, f"{knob}={value} outside [{low}, {high}]"
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.parametrize("tool", TOOLS)
@settings(max_examples=75, **SETTINGS)
@given(data=st.data(), clamp=st.booleans())
def test_any_arguments_are_accepted_or_rejected_by_name(setup, tool, data, clamp):
    ctl = fresh_controls(setup, Bounds(clamp=clamp))
    accepted: dict[str, float] = {}
    for _ in range(data.draw(st.integers(1, 3))):
        args = data.draw(arguments(ctl, tool, valid_only=False))
        try:
            reply = call_tool(tool, ctl, args)
        except ToolArgumentError as exc:
            assert exc.argument is not None, str(exc)
            assert exc.argument in {*args, *discover()[tool].args.model_fields, "rollback"}, str(exc)
            assert exc.argument in str(exc)
            event(f"rejected: {exc.argument}")
            continue
        assert isinstance(reply, str) and reply
        event("accepted")
        for knob in KNOBS:
            if knob in ctl.pending and ctl.pending[knob].tool == tool and knob in args:
                accepted[knob] = ctl.pending[knob].value
    ctl.commit()
    check_bounds(ctl)
    for knob, value in accepted.items():
        assert ctl.current(knob) == value


@pytest.mark.parametrize("tool", TOOLS)
@settings(max_examples=25, **SETTINGS)
@given(data=st.data())
def test_in_range_arguments_are_applied(setup, tool, data):
    ctl = fresh_controls(setup)
    trainer = ctl.trainer
    args = data.draw(arguments(ctl, tool, valid_only=True))
    if tool == "rollback":  # its precondition: the weights moved away from the last good state
        with torch.no_grad():
            next(trainer.model.parameters()).add_(1.0)
    reply = call_tool(tool, ctl, args)  # must not raise: every argument is inside its allowed range
    assert isinstance(reply, str) and reply
    assert "clamped" not in reply
    result = ctl.commit()
    check_bounds(ctl)
    for knob in KNOBS:
        if knob in args:
            assert ctl.current(knob) == float(args[knob])
    if "layer" in args:
        assert trainer.pending_delta_layers == [args["layer"]]
    if tool == "rollback":
        good = trainer.last_good["model"]
        assert all(torch.equal(v, good[k]) for k, v in trainer.model.state_dict().items())
    if tool == "keep_current":
        assert result.kept == [args["reason"]]
    if discover()[tool].mutating and tool != "keep_current":
        # A knob set to the value it already has (adjust weight_decay_down at 0, say) is kept as "no change".
        no_change = [k for k in result.kept if k.endswith("(no change)")]
        assert result.applied or no_change, f"{tool} accepted {args} but staged nothing"
