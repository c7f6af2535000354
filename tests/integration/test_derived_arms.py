"""The arms derived from other arms' cells (experiments/derived_arms.py): ``constant_policy`` holds the primary LLM
arm's most frequent call from the first decision; ``placebo``'s controller reads another seed's baseline metrics
while acting on its own trainer. End to end through ``mimic-learn reproduce`` on tiny digits runs."""

from __future__ import annotations

import functools
import json
import math
import re

import mlflow
import pytest

from mimic_learn.agents.scripted import ScriptedChatModel
from mimic_learn.experiments import derived_arms, reproduction
from mimic_learn.experiments.derived_arms import PlaceboView, most_frequent_action, placebo_source_seed
from mimic_learn.tracking.tags import CELL_NOTE, DERIVED_FROM

# The LLM arm's script: set_lr(lr=0.003) at both decisions, set_dropout(dropout=0.3) beside it at the second.
SCRIPT = {
    "decisions": [
        {"epoch": 1, "tool_calls": [{"name": "set_lr", "args": {"lr": 0.003, "reason": "a"}}]},
        {"epoch": 2, "tool_calls": [{"name": "set_lr", "args": {"lr": 0.003, "reason": "b"}},
                                    {"name": "set_dropout", "args": {"dropout": 0.3, "reason": "c"}}]},
    ]
}  # fmt: skip
EPOCHS = 3  # decisions after epochs 1 and 2


@pytest.fixture()
def run_reproduce(run_reproduce):
    """The shared command runner with the console's line wrapping undone (phrases here are asserted whole)."""
    return functools.partial(run_reproduce, unwrap=True)


def _rows(report: str) -> dict[str, list[str]]:
    return {
        line.split(" | ")[0].strip("| "): line.split(" | ")
        for line in report.splitlines()
        if line.startswith("| ") and not line.startswith("| arm")
    }


# ------------------------------------------------------------------------------ the pieces
def test_most_frequent_action_counts_accepted_acting_calls_without_the_reason():
    def row(tool: str, args: dict, accepted: bool = True) -> dict:
        return {"tool": tool, "arguments": json.dumps(args), "accepted": accepted}

    tables = {
        "run0": [
            row("set_weight_decay", {"weight_decay": 0.001, "reason": "x"}),
            row("inspect_per_class", {"reason": "look"}),  # reads, does not act: not counted
            row("inspect_per_class", {"reason": "again"}),
            row("set_lr", {"lr": 5.0, "reason": "bad"}, accepted=False),  # rejected: not counted
            row("set_lr", {"lr": 5.0, "reason": "bad"}, accepted=False),
        ],
        "run1": [row("set_weight_decay", {"weight_decay": 0.001, "reason": "y"}), row("keep_current", {})],
        "run2": [row("", {}, accepted=False)],  # a decision without a call
    }
    action = most_frequent_action(tables)
    assert (action.tool, action.args, action.count, action.calls) == (
        "set_weight_decay",
        {"weight_decay": 0.001},
        2,
        3,
    )
    assert action.run_ids == ("run0", "run1") and action.text == "set_weight_decay(weight_decay=0.001)"
    assert action.controller == "constant:set_weight_decay:weight_decay=0.001"
    # A tie goes to the call seen first; nothing that acts: no action
    tie = {"a": [row("keep_current", {}), row("set_lr", {"lr": 0.003})]}
    assert most_frequent_action(tie).tool == "keep_current"
    assert most_frequent_action({"a": [row("inspect_history", {})]}) is None


def test_placebo_source_seed_is_the_next_seed_of_the_sitting_cyclically():
    assert [placebo_source_seed(s, [0, 1, 2]) for s in (0, 1, 2)] == [1, 2, 0]
    assert [placebo_source_seed(s, [5, 3]) for s in (5, 3)] == [3, 5]
    assert placebo_source_seed(4, [4]) == 5


def test_placebo_view_swaps_every_measured_number_and_keeps_the_knobs():
    other = {
        e: {"epoch": e, "train_loss": 10.0 + e, "train_acc": 0.1 * e, "val_loss": 20.0 + e, "val_acc": 0.2 * e,
            "per_class_val_acc": [0.5, 0.6], "grad_norms": {"w": 3.0 * e, "b": math.nan}, "metrics": {"f1": 0.4},
            "wall_time": 9.0, "lr": 0.001, "dropout": 0.2}
        for e in (1, 2)
    }  # fmt: skip
    own = {"epoch": 2, "train_loss": 1.0, "train_acc": 0.9, "val_loss": 2.0, "val_acc": 0.8,
           "per_class_val_acc": [0.9, 0.9], "grad_norms": {"w": 1.0}, "metrics": {}, "wall_time": 1.0, "lr": 0.003,
           "dropout": 0.3, "weight_decay": 0.0, "alpha": 0.0, "events": ["lr 0.001 -> 0.003"], "total_epochs": 4,
           "history": [{"epoch": 1, "train_loss": 1.5, "val_loss": 2.5, "train_acc": 0.7, "val_acc": 0.6,
                        "lr": 0.001, "dropout": 0.2, "grad_norm": 1.0}]}  # fmt: skip
    seen = PlaceboView(7, "run-b", other)(own)
    assert (seen["train_loss"], seen["val_loss"], seen["val_acc"], seen["train_acc"]) == (
        12.0,
        22.0,
        0.4,
        0.2,
    )
    assert (
        seen["per_class_val_acc"] == [0.5, 0.6]
        and seen["grad_norms"]["w"] == 6.0
        and seen["metrics"] == {"f1": 0.4}
    )
    assert (seen["lr"], seen["dropout"], seen["events"], seen["total_epochs"]) == (
        0.003,
        0.3,
        ["lr 0.001 -> 0.003"],
        4,
    )
    (row,) = seen["history"]
    assert (row["val_acc"], row["train_loss"], row["grad_norm"], row["f1"]) == (0.2, 11.0, 3.0, 0.4)
    assert (row["lr"], row["dropout"], row["epoch"]) == (0.001, 0.2, 1)
    assert own["val_acc"] == 0.8  # the run's own report is not modified
    with pytest.raises(ValueError, match="no epoch 3"):
        PlaceboView(7, "run-b", other)(own | {"epoch": 3})


def test_constant_controller_takes_a_literal_call_and_names_the_form_on_a_bad_one():
    from mimic_learn.agents.providers import load_chat_model

    model = load_chat_model("constant:set_weight_decay:weight_decay=0.001")
    ai = model.decide({"epoch": 1, "weight_decay": 0.0}, 0, [])
    assert ai.tool_calls[0]["name"] == "set_weight_decay"
    assert ai.tool_calls[0]["args"] == {"weight_decay": 0.001, "reason": "constant policy"}
    two = load_chat_model("constant:propose_weight_delta:layer=fc.4.weight,operation=scale,magnitude=0.05")
    assert two.decide({}, 0, []).tool_calls[0]["args"]["layer"] == "fc.4.weight"
    for bad, says in [
        ("constant:set_lrr:lr=0.003", "constant:<tool>:<arg>=<value>"),
        ("constant:set_lr:lr=fast", "set_lr takes lr"),
        ("constant:set_lr:rate=0.1", "set_lr takes lr"),
        ("constant:set_lr:lr=5", "out of range"),
        ("constant:set_lr:lr", "not <arg>=<value>"),
    ]:
        with pytest.raises(ValueError, match=says):
            load_chat_model(bad)


# ------------------------------------------------------------------------------ end to end
def _record_what_controllers_read(monkeypatch) -> list[tuple[str, int, dict]]:
    """(arm, seed, report) for every scripted decision: which cell runs comes from run_cell's arguments."""
    seen: list[tuple[str, int, dict]] = []
    current: dict = {}
    real_run_cell, real_decide = reproduction.run_cell, ScriptedChatModel.decide

    def run_cell(spec, arm, experiment, regime, seed, **kwargs):
        current.update(arm=arm.name, seed=seed)
        return real_run_cell(spec, arm, experiment, regime, seed, **kwargs)

    def decide(self, report, turn, replies):
        if turn == 0:
            seen.append((current["arm"], current["seed"], report))
        return real_decide(self, report, turn, replies)

    monkeypatch.setattr(reproduction, "run_cell", run_cell)
    monkeypatch.setattr(ScriptedChatModel, "decide", decide)
    return seen


def _history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _sitting(run_reproduce, workdir, seeds: str, arms: str, *extra: str) -> str:
    return run_reproduce(
        "paper", "--task", "digits", "--regimes", "100", "--seeds", seeds, "--epochs", str(EPOCHS),
        "--arms", arms, "--controller", f"scripted:{workdir / 'script.json'}",
        "--tracking-uri", f"sqlite:///{workdir / 'm.db'}", *extra,
    )  # fmt: skip


@pytest.mark.slow  # about 50 s: four reproduce sittings of real (tiny) training
def test_constant_policy_and_placebo_run_after_their_prerequisites(workdir, monkeypatch, run_reproduce):
    (workdir / "script.json").write_text(json.dumps(SCRIPT))
    seen = _record_what_controllers_read(monkeypatch)
    # Sitting 1, one seed: the LLM arm's cell runs first, then constant_policy from it; the placebo of seed 0
    # reads seed 1's baseline (one seed: s+1), which is not in the store yet
    arms = "baseline,llm_paper_log_only,constant_policy,placebo"
    out = _sitting(run_reproduce, workdir, "0", arms)
    assert re.findall(r"done (\S+)", out) == [f"paper/100/{a}/s0" for a in arms.split(",")[:3]]
    assert "skip paper/100/placebo/s0 (not run: needs baseline seed 1 first)" in out
    report = (workdir / "docs/results/paper.md").read_text()
    assert _rows(report)["placebo"][2] == "not run (needs baseline seed 1 first)"
    assert "- `constant_policy` (seed 0): applied `set_lr(lr=0.003)` at every decision" in report
    assert (
        "the most frequent accepted call of `llm_paper_log_only` in this regime (2 of 3 accepted calls, 1 cell)"
        in report
    )
    # Sitting 2, seeds 1,0: baseline s1 runs, then both placebos (s1 reads s0's baseline, s0 reads s1's)
    out = _sitting(run_reproduce, workdir, "1,0", "baseline,placebo")
    assert re.findall(r"done (\S+)", out) == [
        "paper/100/baseline/s1",
        "paper/100/placebo/s1",
        "paper/100/placebo/s0",
    ]

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'm.db'}")
    mlflow.set_experiment("mimic-reproduce-paper")
    client = mlflow.MlflowClient()
    finished = reproduction.finished_cells("paper")
    run = lambda arm, s: finished[f"paper/100/{arm}/s{s}"]  # noqa: E731

    # constant_policy: the LLM arm's most frequent call at every decision
    constant = run("constant_policy", 0)
    assert constant.data.params["controller"] == "constant:set_lr:lr=0.003"
    calls = [
        (r["epoch"], r["tool"], json.loads(r["arguments"]), r["accepted"])
        for r in derived_arms.decision_table(constant.info.run_id)
    ]
    assert calls == [
        (e, "set_lr", {"lr": 0.003, "reason": "constant policy"}, True) for e in range(1, EPOCHS)
    ]
    assert _history(client, constant.info.run_id, "lr")[2] == pytest.approx(0.003)  # from epoch 2 on

    # placebo: at every decision its controller read the other seed's baseline numbers, and its own knobs
    for s, other in ((0, 1), (1, 0)):
        placebo, base = run("placebo", s), run("baseline", other)
        assert placebo.data.tags["mimic.placebo.source_seed"] == str(other)
        assert placebo.data.tags["mimic.placebo.source_run"] == base.info.run_id
        reports = [r for arm, seed, r in seen if (arm, seed) == ("placebo", s)]
        assert [r["epoch"] for r in reports] == list(range(1, EPOCHS))
        base_val, own_val = (_history(client, x.info.run_id, "val_acc") for x in (base, placebo))
        base_loss = _history(client, base.info.run_id, "train_loss")
        base_class = _history(client, base.info.run_id, "val_acc_class/3")
        own_lr = _history(client, placebo.info.run_id, "lr")
        for r in reports:
            e = r["epoch"]
            assert r["val_acc"] == pytest.approx(base_val[e]) and r["train_loss"] == pytest.approx(
                base_loss[e]
            )
            assert r["per_class_val_acc"][3] == pytest.approx(base_class[e])
            assert [h["val_acc"] for h in r["history"]] == pytest.approx(
                [base_val[k] for k in range(1, e + 1)]
            )
            assert r["lr"] == pytest.approx(own_lr[e])  # its own knob, not the baseline's
        assert any(r["val_acc"] != pytest.approx(own_val[r["epoch"]]) for r in reports)
        assert reports[-1]["lr"] == pytest.approx(0.003)  # its own set_lr acted on its own trainer
        assert set(_history(client, base.info.run_id, "lr").values()) == {0.001}
        # `mimic-learn resume` of a killed placebo cell rebuilds the same view from its tags
        view = derived_arms.resume_view(placebo.data.tags)
        assert (view.source_seed, view.source_run_id) == (other, base.info.run_id)
        assert (
            view.reports == derived_arms.epoch_reports(base.info.run_id) and len(view.reports) >= EPOCHS - 1
        )
        assert derived_arms.resume_view(base.data.tags) is None
    # the LLM arm read its own numbers
    llm = [r for arm, seed, r in seen if arm == "llm_paper_log_only"]
    own = _history(client, run("llm_paper_log_only", 0).info.run_id, "val_acc")
    assert [r["val_acc"] for r in llm] == pytest.approx([own[e] for e in range(1, EPOCHS)])

    # The whole table from the store, then from the per-cell file: rows, knobs changed, what each was given
    _sitting(run_reproduce, workdir, "0,1", arms, "--report-only")
    report = (workdir / "docs/results/paper.md").read_text()
    rows = _rows(report)
    assert list(rows) == arms.split(",") and rows["placebo"][1] == "2" and rows["constant_policy"][1] == "1"
    assert "lr" in rows["constant_policy"][12] and "dropout" in rows["placebo"][12]  # knobs changed
    assert "- `placebo` (seed 0): seed 0 read seed 1's `baseline` metrics" in report
    assert "- `placebo` (seed 1): seed 1 read seed 0's `baseline` metrics" in report
    run_reproduce("paper", "--from-cells", "docs/results/paper_cells.csv", "--out", "again.md")
    notes = lambda text: [x for x in text.splitlines() if re.match(r"- `\w+` \(seeds? ", x)]  # noqa: E731
    assert len(notes(report)) == 3 and notes((workdir / "again.md").read_text()) == notes(report)


def test_derived_cells_without_their_prerequisites_are_reported_not_run(workdir, run_reproduce):
    out = run_reproduce(
        "paper", "--task", "digits", "--regimes", "100", "--seeds", "0", "--epochs", "2",
        "--arms", "constant_policy,placebo", "--controller", "rules",
        "--tracking-uri", f"sqlite:///{workdir / 'm.db'}",
    )  # fmt: skip
    assert "done " not in out
    assert (
        "skip paper/100/constant_policy/s0 (not run: needs llm_paper_log_only cells in this regime first)"
        in out
    )
    report = (workdir / "docs/results/paper.md").read_text()  # a regime without a finished cell: no table
    assert "- `paper/100/constant_policy/s0`: needs llm_paper_log_only cells in this regime first" in report
    assert "- `paper/100/placebo/s0`: needs baseline seed 1 first" in report  # one seed: s+1
    cells = (workdir / "docs/results/paper_cells.csv").read_text()
    assert "needs baseline seed 1 first" in cells
    # --report-only says the same without running anything
    run_reproduce(
        "paper", "--task", "digits", "--regimes", "100", "--seeds", "0", "--epochs", "2", "--report-only",
        "--arms", "constant_policy,placebo", "--tracking-uri", f"sqlite:///{workdir / 'm.db'}",
    )  # fmt: skip
    again = (workdir / "docs/results/paper.md").read_text()
    assert "- `paper/100/placebo/s0`: needs baseline seed 1 first" in again
    assert "- `paper/100/constant_policy/s0`: needs llm_paper_log_only cells in this regime first" in again


def test_dry_run_and_arm_lists_include_the_derived_arms(run_reproduce):
    from mimic_learn.experiments import OPTIONAL_ARMS, resolve_arms

    for kind, prompt in (("paper", "paper"), ("blog", "losses")):
        names = [a.name for a in OPTIONAL_ARMS[kind]]
        assert {"constant_policy", "placebo"} <= set(names)
        (placebo,) = resolve_arms(kind, ["placebo"])
        assert placebo.controller == "LLM" and placebo.prompt == prompt
        assert derived_arms.source_arm(kind, "placebo@lr_x30") == resolve_arms(kind, None)[0].name + "@lr_x30"
    out = run_reproduce(
        "paper", "--dry-run", "--regimes", "100", "--seeds", "0,1", "--arms", "constant_policy,placebo"
    )
    assert "constant_policy" in out and "placebo" in out


def test_constant_adapter_holds_the_adapters_call_and_constant_policy_the_primary_arms(monkeypatch):
    """Two constant arms in one sitting, each from its own source arm's cells: constant_adapter from llm_adapter,
    constant_policy from llm_paper_log_only; without llm_adapter cells constant_adapter says what it needs."""
    from types import SimpleNamespace

    from mimic_learn.experiments import ReproduceOptions, resolve_arms
    from mimic_learn.experiments.reproduction import pending_cells

    def row(lr: float) -> dict:
        return {"tool": "set_lr", "arguments": json.dumps({"lr": lr, "reason": "r"}), "accepted": True}

    tables = {"a0": [row(0.003)] * 3, "a1": [row(0.003), row(0.0005)], "p0": [row(0.001)] * 2}
    monkeypatch.setattr(derived_arms, "decision_table", lambda run_id: tables[run_id])
    run = lambda run_id: SimpleNamespace(info=SimpleNamespace(run_id=run_id))  # noqa: E731
    finished = {
        "paper/100/llm_adapter/s0": run("a0"),
        "paper/100/llm_adapter/s1": run("a1"),
        "paper/100/llm_paper_log_only/s0": run("p0"),
    }
    options = ReproduceOptions("paper", ["100"], [0], task="digits", epochs=3)
    cells, _ = pending_cells(
        options, resolve_arms("paper", ["constant_policy", "constant_adapter"]), {}, print
    )
    ready, blocked = derived_arms.prepare(cells, "paper", [0], finished)
    controllers = {cell.arm.name: cell.spec.controller for cell in ready}
    assert blocked == {}
    assert controllers == {
        "constant_policy": "constant:set_lr:lr=0.001",
        "constant_adapter": "constant:set_lr:lr=0.003",
    }
    (adapter,) = [cell for cell in ready if cell.arm.name == "constant_adapter"]
    assert "most frequent accepted call of `llm_adapter`" in adapter.tags[CELL_NOTE]
    assert adapter.tags[DERIVED_FROM] == "a0,a1"
    del finished["paper/100/llm_adapter/s0"], finished["paper/100/llm_adapter/s1"]
    ready, blocked = derived_arms.prepare(cells, "paper", [0], finished)
    assert [cell.arm.name for cell in ready] == ["constant_policy"]
    assert blocked == {"paper/100/constant_adapter/s0": "needs llm_adapter cells in this regime first"}
    assert derived_arms.source_arm("paper", "constant_adapter@lr_x30") == "llm_adapter@lr_x30"
